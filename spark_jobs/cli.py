"""`llm-decoder`: one command with a subcommand per step, the whole pipeline, and generate.

Every step subcommand takes `--config FILE` and repeatable `--set key.sub=value`, exactly
like the step scripts under `spark-submit`. User errors print one line and exit 2; add
`--verbose` for the traceback.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Annotated, Any

import typer

from spark_jobs.config import PipelineConfig, load_config
from spark_jobs.errors import PipelineError
from spark_jobs.run_logging import configure_logging

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])
log = logging.getLogger("spark_jobs.cli")

ConfigOption = Annotated[
    str | None, typer.Option("--config", "-c", help="YAML config file (default: built-in defaults)")
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="override a config value: key.sub=value (repeatable)"),
]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="show tracebacks")]


def _fail(exc: BaseException, verbose: bool) -> None:
    if verbose:
        log.exception("failed")
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(getattr(exc, "exit_code", 1))


def _load(config: str | None, overrides: list[str] | None, step: str) -> PipelineConfig:
    cfg = load_config(config, overrides or [])
    configure_logging(cfg.run.id, step, cfg.run.log_level)
    return cfg


def _run_step(
    step: str, config: str | None, overrides: list[str] | None, verbose: bool, **kwargs: Any
) -> Any:
    try:
        cfg = _load(config, overrides, step)
        module = importlib.import_module(f"spark_jobs.{step}")
        return module.run(cfg, **kwargs)
    except PipelineError as exc:
        _fail(exc, verbose)


@app.command()
def preprocess(config: ConfigOption = None, set_: SetOption = None, verbose: VerboseOption = False) -> None:
    """Tokenize the corpus (BPE) and build token embeddings on Spark."""
    _run_step("preprocess", config, set_, verbose)


@app.command()
def window(config: ConfigOption = None, set_: SetOption = None, verbose: VerboseOption = False) -> None:
    """Cut the token stream into train/val sliding windows on Spark."""
    _run_step("window", config, set_, verbose)


@app.command()
def train(
    config: ConfigOption = None,
    set_: SetOption = None,
    resume: Annotated[bool, typer.Option(help="continue from the latest checkpoint")] = False,
    verbose: VerboseOption = False,
) -> None:
    """Train the model (single process, DDP via TorchDistributor, or parameter averaging)."""
    _run_step("train", config, set_, verbose, resume=resume)


@app.command()
def pipeline(config: ConfigOption = None, set_: SetOption = None, verbose: VerboseOption = False) -> None:
    """Run preprocess → window → train in order."""
    for step in ("preprocess", "window", "train"):
        _run_step(step, config, set_, verbose)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
