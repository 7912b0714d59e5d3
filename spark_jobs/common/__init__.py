"""Plumbing every other package stands on: the typed config, storage (local or s3://), errors, logging, the SparkSession.

    pipeline.py       the steps in order, as plain data (the one list of them)
    config.py         PipelineConfig: one YAML file + `--set key=value` overrides, validated
    storage.py        a run's files on a local disk or S3 (pyarrow.fs), the run layout, `_SUCCESS` commits
    errors.py         errors a user can fix (one line, exit 2)
    finite_json.py    the JSON files we write: never a bare NaN or Infinity
    logs.py           logging with the run id and step on every line
    spark_session.py  the SparkSession, built the same way by every step

May import: nothing else of spark_jobs (this is the ground floor).
"""
