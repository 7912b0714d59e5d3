# Airflow with Java 17, Spark (pyspark) and CPU torch: runs llm_decoder_local inside the
# container and submits llm_decoder_emr to EMR. dags/, plugins/, configs/ and data/ are mounted
# by docker-compose.yaml; the spark_jobs package is installed here.
# The tag's Airflow version and Python must match pyproject.toml (tests/airflow/test_compose.py).
ARG AIRFLOW_VERSION=3.3.2
FROM apache/airflow:${AIRFLOW_VERSION}-python3.11
ARG AIRFLOW_VERSION

USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps \
    && ln -s "/usr/lib/jvm/java-17-openjdk-$(dpkg --print-architecture)" /usr/lib/jvm/java-17 \
    && apt-get clean && rm -rf /var/lib/apt/lists/*
ENV JAVA_HOME=/usr/lib/jvm/java-17

USER airflow
COPY --chown=airflow:root pyproject.toml README.md /opt/llm-decoder/
COPY --chown=airflow:root spark_jobs /opt/llm-decoder/spark_jobs
# CPU torch from PyTorch's index (PyPI's linux wheel is the multi-GB CUDA build), then the
# project with its pins; apache-airflow stays at the image's version.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
    && pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" "/opt/llm-decoder[airflow]"

# The DAGs find configs/ and data/ under the Airflow home (mounted volumes).
ENV LLM_DECODER_HOME=/opt/airflow \
    SPARK_LOCAL_IP=127.0.0.1
