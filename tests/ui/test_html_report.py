"""report.html: one self-contained file with every section; missing files are named, not fatal."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from spark_jobs.common.errors import InputError
from spark_jobs.reporting.html.render import build_html_report, write_html_report

SECTIONS = ["Headline figures", "Champion comparison", "Training curves", "Sample generations",
            "Data distribution", "Spark executors and tasks", "Time per pipeline step", "Config used"]  # fmt: skip


class _Links(HTMLParser):
    """Every URL-bearing attribute and tag in the document."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "data", "action") and value is not None:
                self.urls.append((tag, name, value))


def _parse(html_text: str) -> _Links:
    parser = _Links()
    parser.feed(html_text)
    return parser


def test_report_is_one_self_contained_file_with_every_section(fake_run: Path) -> None:
    written = write_html_report(str(fake_run))

    assert written == str(fake_run / "metrics" / "report.html")
    text = Path(written).read_text(encoding="utf-8")
    links = _parse(text)
    assert "link" not in links.tags and "script" not in links.tags and "iframe" not in links.tags
    images = [value for tag, name, value in links.urls if tag == "img"]
    assert len(images) >= 3  # curves, partitions, step times
    for tag, name, value in links.urls:
        if tag == "img":
            assert value.startswith("data:image/png;base64,")
            assert base64.b64decode(value.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
        else:
            assert name == "href" and value.startswith("#"), (tag, name, value)
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in text
    # Headline figures, the data distribution, Spark, timings, samples and the config, by content.
    for figure in ("1.875", "0.3125", "9,123.4", "run-a", "ddp"):
        assert f"<td>{figure}</td>" in text, figure
    assert "<td>2,770</td>" in text and "<td>1.083</td>" in text  # train windows, skew 1000 / 923.3
    assert "<td>driver</td>" in text and "<td>4,321</td>" in text  # executor row: task time
    assert "<td>12.5</td>" in text and "<td>61.5</td>" in text  # preprocess and train seconds
    assert "What light through yonder window breaks?" in text
    assert "kind: gpt" in text
    assert "No champion yet" in text
    assert "Missing parts" not in text


def test_missing_spark_json_still_renders_and_says_so(tmp_path: Path, make_fake_run) -> None:
    run = make_fake_run(tmp_path / "root", "no-spark", val_loss=2.0, spark=False)

    text = Path(write_html_report(str(run))).read_text(encoding="utf-8")

    assert "Missing: the Spark metrics of training — <code>metrics/spark.json</code> was not found." in text
    assert "<li>Spark metrics: <code>metrics/spark.json</code></li>" in text
    assert "<td>driver</td>" not in text
    # Every other section is intact.
    assert "<h2>Training curves</h2>" in text and "data:image/png;base64," in text
    assert "What light through yonder window breaks?" in text


def test_the_data_steps_spark_metrics_are_shown_beside_the_training_s(tmp_path: Path, make_fake_run) -> None:
    run = make_fake_run(tmp_path / "root", "steps-spark", val_loss=2.0, spark=False)
    step_metrics = {"master": "local[2]", "executors": [{"id": "driver", "completed_tasks": 7}]}
    (run / "preprocess").mkdir(parents=True, exist_ok=True)
    (run / "preprocess" / "spark.json").write_text(json.dumps(step_metrics), encoding="utf-8")

    text = Path(write_html_report(str(run))).read_text(encoding="utf-8")

    assert "<h3>preprocess step</h3>" in text
    assert "<td>driver</td>" in text and "<td>7</td>" in text


def test_an_empty_run_folder_renders_with_every_part_missing(tmp_path: Path) -> None:
    run = tmp_path / "root" / "runs" / "empty"
    run.mkdir(parents=True)
    out = tmp_path / "elsewhere" / "r.html"

    written = write_html_report(str(run), str(out))

    text = out.read_text(encoding="utf-8")
    assert written == str(out)
    # Each section names its missing file; the list at the top names every missing part.
    for path in (
        "metrics/summary.json",
        "metrics/steps.jsonl",
        "metrics/spark.json",
        "window/data_distribution.json",
    ):
        assert f"<code>{path}</code> was not found" in text, path
    assert "<li>preprocess stats: <code>preprocess/stats.json</code></li>" in text
    assert "not recorded" in text  # step timings


def test_a_run_folder_that_does_not_exist_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="run folder not found: .*nope"):
        write_html_report(str(tmp_path / "runs" / "nope"))


def test_champion_comparison_reads_the_pointer_and_the_champions_summary(
    tmp_path: Path, make_fake_run
) -> None:
    root = tmp_path / "root"
    make_fake_run(root, "champ", val_loss=1.5)
    challenger = make_fake_run(root, "challenger", val_loss=1.75)
    (root / "models").mkdir()
    (root / "models" / "champion.json").write_text(json.dumps({"run_id": "champ", "val_loss": 1.5}))

    text = Path(write_html_report(str(challenger))).read_text(encoding="utf-8")

    assert "The champion (champ) stays ahead on val loss by 0.2500." in text
    # val_accuracy came from the champion's own summary.json, not from the pointer.
    assert "<tr><td>val_loss</td><td>1.75</td><td>1.5</td><td>champion</td></tr>" in text
    assert "<tr><td>val_accuracy</td><td>0.3125</td><td>0.3125</td><td>–</td></tr>" in text

    champion_text = Path(write_html_report(str(root / "runs" / "champ"))).read_text(encoding="utf-8")
    assert "This run is the champion." in champion_text


def test_report_reads_and_writes_s3(fake_run: Path, moto_s3: str, upload_tree) -> None:
    from spark_jobs.common import storage

    run_uri = f"{moto_s3}/runs/run-a"
    upload_tree(str(fake_run), run_uri)

    written = write_html_report(run_uri)

    assert written == f"{run_uri}/metrics/report.html"
    text = storage.read_text(written)
    assert "<td>1.875</td>" in text and "<td>driver</td>" in text and "Missing parts" not in text


def test_build_html_report_reads_through_the_given_reader(fake_run: Path) -> None:
    """Airflow's collect task reads with its S3Hook: the report takes any `uri -> text | None`."""
    run_uri = "s3://bucket/prefix/runs/run-a"
    blobs = {
        f"{run_uri}/{path.relative_to(fake_run).as_posix()}": path.read_text(encoding="utf-8")
        for path in fake_run.rglob("*")
        if path.is_file()
    }
    blobs["s3://bucket/prefix/models/champion.json"] = json.dumps({"run_id": "run-a", "val_loss": 1.875})
    asked: list[str] = []

    def read(uri: str) -> str | None:
        asked.append(uri)
        return blobs.get(uri)

    text = build_html_report(run_uri, read=read)

    assert f"{run_uri}/metrics/summary.json" in asked and "s3://bucket/prefix/models/champion.json" in asked
    assert "<td>1.875</td>" in text and "This run is the champion." in text and "Missing parts" not in text
