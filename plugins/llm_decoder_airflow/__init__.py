"""Airflow-side code of llm-decoder: the pipeline definition, EMR specs, staging, metrics, promotion.

Nothing here imports torch, pyspark, pandas or numpy at module level: the DAG files import
these modules, and the scheduler parses DAG files often.
May import: spark_jobs.common (config, the step list, errors) and spark_jobs.reporting.summary
at module level; anything else of spark_jobs only inside a task's function.
"""
