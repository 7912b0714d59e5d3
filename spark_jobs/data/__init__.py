"""The data side, mostly pure functions that the Spark steps call and unit tests call without Spark.

    corpus.py      the text rules: decoding, normalisation, segments
    corpus_files.py  which files: a file, a directory or a glob; literal paths, hidden names, links
    corpus_blocks.py  reading the files on the executors in blocks of whole lines; the split's arithmetic
    corpus_spark.py   the corpus on Spark for preprocess: blocks cached on the executors, plans on the driver
    tokenizer.py   byte-level BPE: training, loading, encoding Arrow batches inside Spark
    embeddings.py  a previous phase's token embeddings (word2vec text / CSV), validated; Word2Vec
    windows.py     the arithmetic of sliding windows and the contiguous train/val split
    window_chunks.py  the window step's files: token chunks plus the runs that define the windows
    loader.py      WindowSet: windows cut on the fly from the chunks; the seeded minibatch order
    validation_text.py  the validation text's token ranges (what the full-split figures score)
    parquet_files.py  a Parquet folder's files, each footer checked (a bad file fails by name)

May import: spark_jobs.common.
"""
