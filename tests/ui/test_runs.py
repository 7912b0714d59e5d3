"""`llm-decoder runs`: past runs with their headline figures, the champion marked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spark_jobs.cli import app
from spark_jobs.common.errors import InputError
from spark_jobs.reporting.runs import list_runs


@pytest.fixture()
def two_runs(tmp_path: Path, make_fake_run) -> Path:
    root = tmp_path / "root"
    make_fake_run(root, "run-old", val_loss=2.25)
    make_fake_run(root, "run-best", val_loss=1.625)
    (root / "models").mkdir()
    (root / "models" / "champion.json").write_text(json.dumps({"run_id": "run-best", "val_loss": 1.625}))
    # A run that stopped after preprocess: listed, with the step that did not finish.
    (root / "runs" / "run-broken" / "preprocess").mkdir(parents=True)
    (root / "runs" / "run-broken" / "preprocess" / "_SUCCESS").write_text("")
    return root


def test_list_runs_gives_headline_figures_and_the_champion(two_runs: Path) -> None:
    runs = {r["run_id"]: r for r in list_runs(str(two_runs))}

    assert set(runs) == {"run-old", "run-best", "run-broken"}
    assert [r["run_id"] for r in runs.values() if r["champion"]] == ["run-best"]
    assert runs["run-best"]["val_loss"] == 1.625 and runs["run-old"]["val_loss"] == 2.25
    assert runs["run-best"]["strategy"] == "ddp" and runs["run-best"]["steps"] == 40
    assert runs["run-best"]["status"] == "complete"
    assert runs["run-broken"]["status"] == "incomplete (window not finished)"
    assert runs["run-broken"]["val_loss"] is None
    assert list_runs(str(two_runs))[-1]["run_id"] == "run-broken"  # unfinished runs last


def test_runs_command_prints_a_table_with_the_champion_marked(two_runs: Path) -> None:
    result = CliRunner().invoke(app, ["runs", "--root", str(two_runs)])

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    best = next(line for line in lines if "run-best" in line)
    old = next(line for line in lines if "run-old" in line)
    assert "★" in best and "1.6250" in best and "ddp" in best
    assert "★" not in old and "2.2500" in old
    assert any("run-broken" in line and "window not finished" in line for line in lines)
    assert "★ = champion" in result.output


def test_runs_on_an_empty_root_says_so_and_succeeds(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["runs", "--root", str(tmp_path)])

    assert result.exit_code == 0
    assert result.output.strip() == f"no runs under {tmp_path} (expected <root>/runs/<run_id>/)"


def test_runs_on_a_missing_root_is_a_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-root"
    with pytest.raises(InputError, match="runs root not found"):
        list_runs(str(missing))

    result = CliRunner().invoke(app, ["runs", "--root", str(missing)])

    assert result.exit_code == 2
    assert result.output.strip() == f"error: runs root not found: {missing}"


def test_report_command_writes_the_html_and_prints_where(fake_run: Path) -> None:
    result = CliRunner().invoke(app, ["report", "--run", str(fake_run)])

    assert result.exit_code == 0, result.output
    written = fake_run / "metrics" / "report.html"
    assert result.output.strip().splitlines()[-1] == str(written)
    assert "<h2>Headline figures</h2>" in written.read_text(encoding="utf-8")


def test_list_runs_on_s3(two_runs: Path, moto_s3: str, upload_tree) -> None:

    upload_tree(str(two_runs), moto_s3)

    runs = {r["run_id"]: r for r in list_runs(moto_s3)}

    assert runs["run-best"]["champion"] and runs["run-best"]["val_loss"] == 1.625
    assert runs["run-old"]["status"] == "complete" and runs["run-old"]["finished"] is not None
    assert runs["run-broken"]["status"] == "incomplete (window not finished)"
