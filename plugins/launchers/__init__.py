"""Developer launchers behind `make run` and `make airflow`: not part of the Airflow plugin library.

They start Airflow (dag.test() of the local DAG, or `airflow standalone`) with this project's
folders; `plugins/.airflowignore` keeps Airflow's plugin manager from importing them.
May import: llm_decoder_airflow and airflow (after setting Airflow's environment).
"""
