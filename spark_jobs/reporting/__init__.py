"""What a run reports about itself, and how people read it.

    train_metrics   per-step/per-epoch metric writers (metrics/steps.jsonl, epochs.csv)
    spark_metrics   Spark executor, stage and task figures (spark.json)
    summary         the run-summary contract: the figures of metrics/summary.json, their
                    labels, units, order and views (pure Python: Airflow imports it)
    markdown        metrics/report.md with PNG plots and sample generations
    html/           the self-contained report.html (read, plots, render)
    runs            `llm-decoder runs`: past runs and the champion

May import spark_jobs.common only: training and the steps import this package, and Airflow's
collect task imports summary.py at DAG-parse time.
"""
