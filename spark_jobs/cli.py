"""`llm-decoder`: one command with a subcommand per step, the whole pipeline, and generate.

Every step subcommand takes `--config FILE` and repeatable `--set key.sub=value`, exactly
like the step scripts under `spark-submit`. User errors print one line and exit 2; add
`--verbose` for the traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer

from spark_jobs.common.config import PipelineConfig, load_config
from spark_jobs.common.errors import OutOfMemory, PipelineError, memory_failures_named
from spark_jobs.common.lease import run_lease
from spark_jobs.common.logs import configure_logging
from spark_jobs.common.pipeline import STEP_NAMES
from spark_jobs.common.run_ids import with_run_id
from spark_jobs.common.spark_session import stop_spark
from spark_jobs.common.storage import run_dir

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
    step: str,
    config: str | None,
    overrides: list[str] | None,
    verbose: bool,
    note: str | None = None,
    **kwargs: Any,
) -> Any:
    try:
        if note is None:
            overrides, note = with_run_id(config, overrides or [], step)
        cfg = _load(config, overrides, step)
        if note:
            log.info("%s", note)
        with run_lease(run_dir(cfg.run.root, cfg.run.id), step):  # one writer per run
            run = _step_function(step)  # after the lease: a refused second writer waits for no import
            with memory_failures_named(step):
                if step == "train" and sys.stderr.isatty():
                    return _with_progress_bar(lambda: run(cfg, **kwargs))
                return run(cfg, **kwargs)
    except OutOfMemory as exc:
        stop_spark()  # Spark logs the tasks it cancels a moment later: our line must be the last
        _fail(exc, verbose)
    except PipelineError as exc:
        _fail(exc, verbose)


def _step_function(step: str) -> Callable[..., Any]:
    """The step's `run`, imported when needed: each pulls in Spark or torch."""
    if step == "preprocess":
        from spark_jobs.steps.preprocess import run
    elif step == "window":
        from spark_jobs.steps.window import run
    elif step == "train":
        from spark_jobs.steps.train import run
    else:
        raise ValueError(f"unknown step {step!r}")
    return run


def _with_progress_bar(train: Any) -> Any:
    """Run `train()` under a rich progress bar fed by the trainer (single-process strategies)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from spark_jobs.training import loop

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task("train", total=None)

        def update(step: int, total: int, loss: float) -> None:
            progress.update(task, completed=step, total=total, description=f"train loss {loss:.3f}")

        loop.set_progress_callback(update)
        try:
            return train()
        finally:
            loop.set_progress_callback(None)


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
    """Run preprocess → window → train in order, then write the run's report.html."""
    from spark_jobs.common import storage
    from spark_jobs.reporting.html.render import write_html_report

    try:
        set_, note = with_run_id(config, set_ or [], "pipeline")  # one id for the three steps
    except PipelineError as exc:
        _fail(exc, verbose)
    for step in STEP_NAMES:
        _run_step(step, config, set_, verbose, note="" if step != STEP_NAMES[0] else note)
    try:
        cfg = _load(config, set_, "report")
        typer.echo(write_html_report(storage.run_dir(cfg.run.root, cfg.run.id)))
    except PipelineError as exc:
        _fail(exc, verbose)


@app.command()
def generate(
    model: Annotated[str, typer.Option("--model", "-m", help="model directory (local or s3://)")],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="text to continue")],
    max_new_tokens: Annotated[int, typer.Option(help="tokens to generate")] = 100,
    temperature: Annotated[float, typer.Option(help="0 = greedy; mlp wants ~0.05")] = 0.8,
    top_k: Annotated[int | None, typer.Option(help="sample among the k likeliest tokens")] = 50,
    seed: Annotated[int, typer.Option(help="same seed, same text")] = 0,
    verbose: VerboseOption = False,
) -> None:
    """Generate text from a prompt with a trained model; prints it to stdout."""
    from spark_jobs.models.artifact import load_model
    from spark_jobs.models.generate import generate as generate_text

    try:
        loaded, tokenizer, _ = load_model(model)
        text = generate_text(loaded, tokenizer, prompt, max_new_tokens, temperature, top_k, seed)
    except PipelineError as exc:
        _fail(exc, verbose)
    typer.echo(text)


@app.command()
def runs(
    root: Annotated[
        str, typer.Option("--root", "-r", help="runs root (local dir or s3://bucket/prefix)")
    ] = "output",
    verbose: VerboseOption = False,
) -> None:
    """List past runs with their headline figures; ★ marks the champion.

    A root with no runs prints "no runs under ROOT" and exits 0; a root that does not exist
    is an error (exit 2), since it is most likely a typo.
    """
    from rich.console import Console

    from spark_jobs.reporting.runs import list_runs, runs_table

    try:
        found = list_runs(root)
    except PipelineError as exc:
        _fail(exc, verbose)
    if not found:
        typer.echo(f"no runs under {root} (expected <root>/runs/<run_id>/)")
        return
    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze the table into 80 columns
        console = Console(width=200)
    console.print(runs_table(found, root))


@app.command()
def report(
    run: Annotated[str, typer.Option("--run", help="run folder <root>/runs/<run_id> (local or s3://)")],
    out: Annotated[
        str | None, typer.Option(help="where to write (default <run>/metrics/report.html)")
    ] = None,
    verbose: VerboseOption = False,
) -> None:
    """Write the run's self-contained report.html and print its location."""
    from spark_jobs.reporting.html.render import write_html_report

    configure_logging("-", "report")
    try:
        written = write_html_report(run, out)
    except PipelineError as exc:
        _fail(exc, verbose)
    typer.echo(written)


@app.command()
def estimate(
    tokens: Annotated[float, typer.Option(help="corpus size in tokens, e.g. 1e9")],
    instance_type: Annotated[str, typer.Option(help="core node type, priced in emr.prices")] = "m5.2xlarge",
    count: Annotated[int, typer.Option(help="core nodes")] = 2,
    table: Annotated[str, typer.Option(help="measured throughputs")] = "bench/throughput.json",
    prices: Annotated[str, typer.Option(help="YAML with emr.prices")] = "configs/emr.yaml",
    verbose: VerboseOption = False,
) -> None:
    """Estimate hours, node-hours, USD and memory per node of each step on EMR (docs/scaling.md)."""
    from spark_jobs.reporting import estimate as est

    try:
        price_table, master = est.load_prices(prices)
        est.check_request(tokens, instance_type, count, price_table)  # before reading the table
        measured = est.load_table(table)
        results = est.estimate(measured, tokens, instance_type, count, price_table, master)
    except PipelineError as exc:
        _fail(exc, verbose)
    typer.echo(est.render(results, measured, tokens, instance_type, count))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
