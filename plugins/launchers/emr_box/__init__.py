"""EMR in a box: `llm_decoder_emr` from trigger to teardown with every step really executed.

moto (over HTTP) plays AWS, a Spark standalone cluster with one-core workers plays the EMR
nodes, s3fs plays EMRFS, and a step runner plays EMR's step executor. `make emr-box` runs
it once and prints one JSON line; tests/emr_box/ runs it under pytest.
"""
