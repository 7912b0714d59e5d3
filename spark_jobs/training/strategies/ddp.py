"""`ddp`: torch DistributedDataParallel ranks launched by Spark's TorchDistributor.

The same launcher runs `parameter_averaging` with `training.averaging_via: allreduce`: the
ranks then train alone and average every `averaging_frequency` steps (see loop.py and
training/collective_averaging.py); everything below holds for both.

Each rank runs the same trainer on a disjoint (interleaved) shard of the windows; DDP
averages gradients, so the ranks stay identical and rank 0 alone writes metrics and
checkpoints. Gloo on CPU. In local mode torchrun runs on the driver; otherwise the ranks
are barrier tasks on executors.

A rank cannot raise our errors across the process boundary (TorchDistributor reports only
that torchrun failed), so a rank that hits a PipelineError records it in the run's storage,
<run>/train-attempts/<attempt>/rank-<r>.json, and the driver re-raises it. The run's storage,
not a local folder: in barrier mode the rank runs on another machine than the driver. Each
`train()` call is a new attempt with a new folder, so an earlier attempt's errors are never
read; the folder is removed when the attempt ends.

A lost executor (a node gone, a process killed) fails the whole barrier stage: Spark never
re-runs a barrier result stage. The driver then runs the ranks again, up to `MAX_ATTEMPTS`
times, and they resume from the newest checkpoint in the run's storage; an error a rank
raised itself (bad input, a bug) is not retried, it would fail the same way again.

A rank waits at most `training.ddp_timeout_minutes` for the others, when joining the process
group and in every collective (gloo's default is 30 minutes): a rank lost mid-run fails the
step instead of leaving it hanging.

Threads: a barrier-mode rank uses the cores Spark gave its task (spark.task.cpus). The rank
runs under torchrun in a child process of the task, where TaskContext is not available, so
the driver passes the number along.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from datetime import timedelta
from typing import Any

from spark_jobs.common import errors, storage
from spark_jobs.common.config import PipelineConfig
from spark_jobs.common.spark_session import get_spark
from spark_jobs.reporting.spark_metrics import spark_metrics_or_none
from spark_jobs.training.inputs import TrainInputs, TrainResult

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
# How Spark reports a barrier stage that lost an executor (and only that is worth retrying).
_LOST_EXECUTOR = ("ExecutorLostFailure", "executor lost", "Executor heartbeat timed out")

# The figures that depend on a rank's own clock: rank 0's are returned by every rank.
_TIMED = ("tokens_per_s", "samples_per_s", "train_s")


def process_group_options(config: PipelineConfig) -> dict[str, Any]:
    """The arguments of each rank's `init_process_group`: gloo (CPU), and a bounded wait."""
    return {"backend": "gloo", "timeout": timedelta(minutes=config.training.ddp_timeout_minutes)}


def _rank_main(
    config_json: str, inputs_json: str, resume: bool, error_dir: str, task_cpus: int | None
) -> dict[str, Any]:
    """What each rank runs (under torchrun): join the process group, train, leave."""
    import torch
    import torch.distributed as dist

    from spark_jobs.common import finite_json, storage
    from spark_jobs.common.config import PipelineConfig
    from spark_jobs.common.errors import PipelineError
    from spark_jobs.common.logs import configure_logging
    from spark_jobs.training.inputs import TrainInputs
    from spark_jobs.training.loop import train_in_process

    config = PipelineConfig.model_validate_json(config_json)
    fields = json.loads(inputs_json)
    embeddings_uri = fields.pop("embeddings_uri")
    embeddings = None
    if embeddings_uri:  # read by each rank, which may run on another machine
        from safetensors.torch import load

        embeddings = load(storage.read_bytes(embeddings_uri))["embeddings"]
    inputs = TrainInputs(embeddings=embeddings, **fields)

    dist.init_process_group(**process_group_options(config))
    rank, world = dist.get_rank(), dist.get_world_size()
    configure_logging(config.run.id, f"train-rank{rank}", config.run.log_level if rank == 0 else "WARNING")
    try:
        result = train_in_process(config, inputs, resume, rank=rank, world_size=world, task_cpus=task_cpus)
        timed = torch.tensor([float(result[k]) for k in _TIMED], dtype=torch.float64)
        dist.broadcast(timed, src=0)  # every rank returns the same value (the last one wins)
        result.update(zip(_TIMED, timed.tolist(), strict=True))
        return result
    except PipelineError as exc:
        record = {"type": type(exc).__name__, "message": str(exc)}
        record_uri = storage.join(error_dir, f"rank-{rank}.json")
        storage.write_text(record_uri, finite_json.dumps(record, record_uri))
        raise
    finally:
        dist.destroy_process_group()


def _rank_error(error_dir: str) -> errors.PipelineError | None:
    """The PipelineError the lowest rank recorded before torchrun failed, if any."""
    names = [n for n in storage.list_dir(error_dir) if n.startswith("rank-") and n.endswith(".json")]
    if not names:
        return None
    first = min(names, key=lambda n: int(n[len("rank-") : -len(".json")]))
    record = json.loads(storage.read_text(storage.join(error_dir, first)))
    error_class = getattr(errors, record["type"], errors.TrainingError)
    return error_class(record["message"])


def _remove_attempt(attempts_dir: str, error_dir: str) -> None:
    """Remove this attempt's folder, and train-attempts/ once empty; a failure here only warns,
    so that it never hides the training's own outcome."""
    try:
        storage.delete(error_dir)
        if not storage.list_dir(attempts_dir):
            storage.delete(attempts_dir)
    except (OSError, errors.PipelineError) as exc:  # storage reports its errors as InputError
        log.warning("could not remove %s: %s", error_dir, exc)


def _run_ranks(
    distributor: Any, config: PipelineConfig, fields: dict[str, Any], attempts_dir: str, task_cpus: int | None
) -> dict[str, Any]:
    """One attempt: every rank trains (resuming from the newest checkpoint, if any) to the end."""
    # A fresh folder per attempt: an earlier attempt's rank errors are never read.
    error_dir = storage.join(attempts_dir, uuid.uuid4().hex[:12])
    try:
        # Ranks always resume: before the first checkpoint, resuming is starting.
        return distributor.run(
            _rank_main, config.model_dump_json(), json.dumps(fields), True, error_dir, task_cpus
        )
    except Exception:
        error = _rank_error(error_dir)
        if error is None:
            raise
        raise error from None
    finally:
        _remove_attempt(attempts_dir, error_dir)


def train(config: PipelineConfig, inputs: TrainInputs, resume: bool) -> TrainResult:
    from pyspark.ml.torch.distributor import TorchDistributor

    del resume  # the ranks always resume from the newest checkpoint, if any (see _run_ranks)
    cfg = config.training
    os.makedirs(inputs.scratch_dir, exist_ok=True)
    if config.spark.master.startswith("local"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo on loopback
    fields = {k: v for k, v in vars(inputs).items() if k != "embeddings"}
    fields["embeddings_uri"] = (
        storage.join(inputs.run_uri, "preprocess", "embeddings.safetensors")
        if inputs.embeddings is not None
        else None
    )
    attempts_dir = storage.join(inputs.run_uri, "train-attempts")
    # Barrier tasks get spark.task.cpus cores each; torchrun on the driver shares its cores.
    spark = get_spark(config, "train")  # TorchDistributor uses the active session
    task_cpus = None if cfg.ddp_local_mode else int(spark.sparkContext.getConf().get("spark.task.cpus", "1"))

    distributor = TorchDistributor(
        num_processes=cfg.num_workers, local_mode=cfg.ddp_local_mode, use_gpu=False
    )
    log.info("%s: %d ranks (local_mode=%s)", cfg.strategy, cfg.num_workers, cfg.ddp_local_mode)
    # torchrun leaves torchelastic_* folders in TMPDIR: keep them in the run's scratch dir.
    previous_tmpdir = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = inputs.scratch_dir
    try:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                result = _run_ranks(distributor, config, fields, attempts_dir, task_cpus)
                break
            except errors.PipelineError:
                raise
            except Exception as exc:
                if attempt == MAX_ATTEMPTS or not any(sign in str(exc) for sign in _LOST_EXECUTOR):
                    raise
                log.warning(
                    "ddp attempt %d/%d lost an executor; running the ranks again from the newest checkpoint",
                    attempt,
                    MAX_ATTEMPTS,
                )
    finally:
        if previous_tmpdir is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = previous_tmpdir
    return {**result, "spark_metrics": spark_metrics_or_none(spark)}
