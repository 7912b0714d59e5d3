# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv run test lint bench airflow stack stack-check postgres-server emr-box emr-plan lock wheelhouse \
	compose-env clean

# (Re)install when pyproject.toml changes; torch==2.13.0 comes from the local CPU wheel.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[airflow,dev]'
	touch $(STAMP)

venv: $(STAMP)

# Airflow on SQLite under ./.airflow, with this project's DAGs and plugins.
AIRFLOW_ENV := AIRFLOW_HOME=$(CURDIR)/.airflow AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags \
	AIRFLOW__CORE__PLUGINS_FOLDER=$(CURDIR)/plugins AIRFLOW__CORE__LOAD_EXAMPLES=False \
	PYTHONPATH=$(CURDIR)/plugins

# The local DAG end to end (dag.test(), no server), then the summary, the report and a sample.
# One line per task; Airflow's and Spark's logs go to .airflow/logs/make-run/. VERBOSE=1 shows them.
VERBOSE ?=
run: $(STAMP)
	@$(AIRFLOW_ENV) $(BIN)/python -m launchers.run_local $(if $(filter 1 yes true,$(VERBOSE)),--verbose)

# The Airflow UI on http://127.0.0.1:8080 (standalone, SQLite); AIRFLOW_PORT=... to move it.
airflow: $(STAMP)
	$(AIRFLOW_ENV) $(BIN)/python -m launchers.standalone

# docker-compose.yaml's Airflow without Docker: its own PostgreSQL under .airflow/stack/, then the
# api-server (http://127.0.0.1:8080, AIRFLOW_PORT=... to move it), scheduler, dag-processor and
# triggerer as separate processes, LocalExecutor, configs/airflow.env. Ctrl-C stops all of it.
stack: $(STAMP) postgres-server
	@PYTHONPATH=$(CURDIR)/plugins $(BIN)/python -m launchers.stack

# The stack, one corpus Asset event through the REST API, the run it starts, stop; last line JSON.
stack-check: $(STAMP) postgres-server
	@PYTHONPATH=$(CURDIR)/plugins $(BIN)/python -m launchers.stack --check

# Debian's PostgreSQL server binaries (initdb, pg_ctl); the stack makes and runs its own cluster.
postgres-server:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } || \
	  { echo "PostgreSQL's server is not installed: sudo apt-get install postgresql" >&2; exit 1; }

# The EMR DAG with every step really executed: moto (AWS), s3fs (EMRFS), a two-worker Spark
# standalone cluster (the nodes). Needs s3fs and FUSE. STRATEGY=parameter_averaging for the other.
STRATEGY ?= ddp
emr-box: $(STAMP)
	$(AIRFLOW_ENV) $(BIN)/python -m launchers.emr_box --strategy $(STRATEGY)

# The exact requests the EMR DAG would send for configs/emr.yaml (one JSON object: run_job_flow,
# steps, estimate_usd), no AWS call. ARGS='--set training.num_workers=2 --set emr.core_instance_count=3'
emr-plan: $(STAMP)
	@$(AIRFLOW_ENV) $(BIN)/python -m llm_decoder_airflow.plan $(ARGS)

# docker-compose.yaml's .env: a random admin password, Fernet key, JWT and API secrets, database
# password. Made once, never overwritten; needs only python3, not the venv.
compose-env:
	@PYTHONPATH=$(CURDIR)/plugins $(PYTHON) -m launchers.compose_env --path $(CURDIR)/.env

# The EMR nodes' packages, installed with no internet (plugins/llm_decoder_airflow/wheelhouse.py).
# lock: resolve pyproject.toml (minus pyspark, CPU torch) into bootstrap/nodes.lock, exact with
# hashes; commit it. wheelhouse: download its wheels into build/wheelhouse-<lock hash>/ (once per
# lock); the `stage` task uploads it to s3://<bucket>/<prefix>/wheelhouse/<lock hash>/ once.
# TORCH_INDEX= where download.pytorch.org is unreachable and pip's own config has the CPU torch.
lock: $(STAMP)
	PYTHONPATH=$(CURDIR)/plugins $(BIN)/python -m llm_decoder_airflow.wheelhouse lock

wheelhouse: $(STAMP)
	PYTHONPATH=$(CURDIR)/plugins $(BIN)/python -m llm_decoder_airflow.wheelhouse build

# Two pytest workers (pytest-xdist): much of the suite waits on JVMs, moto and Airflow, not on
# the cores (three workers on two cores were slower: 28.8 against 27.1 minutes). Each worker is
# its own session (its own Airflow DB, scratch dir and session fixtures). Tests that share a
# costly fixture (one `make stack`, one EMR box, one preprocess run) go to one worker together
# (--dist loadgroup), the longest groups first (tests/conftest.py orders them; no reordering by
# size). TEST_WORKERS=0 runs everything in this process, one test after another.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest -n $(TEST_WORKERS) $(if $(filter 0,$(TEST_WORKERS)),,--dist loadgroup --no-loadscope-reorder) --durations=30

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python bench/data_steps.py

clean:
	rm -rf output .airflow .pytest_cache
