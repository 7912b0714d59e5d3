"""The pipeline's Spark steps: what `spark-submit` runs, in pipeline order (see `spark_jobs.common.pipeline.STEPS`).

    preprocess.py   corpus -> tokenizer, token ids, embeddings
    window.py       token ids -> train/val sliding windows
    train.py        windows -> model, checkpoints, metrics (with a training strategy)
    entrypoint.py   the `main` they share: parse the arguments, load the config, run, one-line errors

Each script stays thin: parse, read, call the pure functions of data/, training/ and
reporting/, write. May import every other package; nothing imports a step script but the CLI.
"""
