"""The Airflow trigger form, used the way a person uses it: a real browser on a real Airflow.

Starts `airflow standalone` (SQLite, its own home, a free loopback port) serving our dags/,
logs in with headless Chromium, opens llm_decoder_local's trigger form, checks that an
out-of-range integer is clamped on blur, changes two Params (epochs, model kind), triggers,
waits for the run to succeed on a small corpus slice, and checks that the run used those
values (its conf, its rendered config and its summary.json). The REST API must answer 400
to an out-of-bounds and to a wrongly typed conf. Last, the run's report.html must open with
its plots. Screenshots of the form, the DAG graph, the finished run and the report go to a
scratch folder, or to $LLM_DECODER_SCREENSHOTS (the README's: docs/screenshots/).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml
from ui_harness import AirflowStandalone, browser_available, start_chromium

DAG_ID = "llm_decoder_local"
# Screenshots go to a scratch folder; `LLM_DECODER_SCREENSHOTS=docs/screenshots` refreshes the
# README's (so a test run never rewrites tracked files by accident).
SCREENSHOTS = Path(os.environ.get("LLM_DECODER_SCREENSHOTS") or tempfile.mkdtemp(prefix="screenshots-"))
# The form's defaults come from this config; the test changes epochs and model kind.
TINY_CONFIG = {
    "spark": {"master": "local[2]", "driver_memory": "1g", "target_partition_size": 5000},
    "model": {"kind": "gpt", "window_size": 16, "embedding_size": 32, "hidden_size": 64, "num_layers": 1,
              "num_heads": 2},
    "training": {"strategy": "single", "batch_size": 16, "num_epochs": 1, "learning_rate": 0.003,
                 "warmup_steps": 5, "eval_interval": 20, "eval_batches": 4, "checkpoint_interval": 50,
                 "log_interval": 5, "sample_tokens": 20},
    "data": {"vocab_size": 300, "window_stride": 16},
}  # fmt: skip
EPOCHS, MODEL_KIND = 2, "mlp"  # both differ from TINY_CONFIG's defaults
EPOCHS_MAX = 1000  # the epochs Param's maximum (plugins/llm_decoder_airflow/params.py)
# Generous: on a busy 2-core machine standalone takes up to ~90 s to answer and the run ~4 min.
START_TIMEOUT_S = 300
RUN_TIMEOUT_S = 600
UI_TIMEOUT_S = 90

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(START_TIMEOUT_S + RUN_TIMEOUT_S + 300),
    pytest.mark.skipif(
        not browser_available(), reason="Debian chromium + chromium-driver not installed (apt-get install)"
    ),
]


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory, corpus_path: Path):
    base = tmp_path_factory.mktemp("browser")
    text = corpus_path.read_text(encoding="utf-8")[:20_000]
    corpus = base / "corpus.txt"
    corpus.write_text(text[: text.rfind("\n\n") + 1], encoding="utf-8")
    config = {**TINY_CONFIG, "data": {**TINY_CONFIG["data"], "corpus_path": str(corpus)}}
    config["airflow"] = {"retries": 0, "local_root": str(base / "root")}
    config_path = base / "local.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")

    server = AirflowStandalone(base / "airflow-home", {"LLM_DECODER_LOCAL_CONFIG": str(config_path)})
    try:
        server.start(timeout_s=START_TIMEOUT_S)
        server.wait_for(
            lambda: server.api("GET", f"/api/v2/dags/{DAG_ID}")[0] == 200, START_TIMEOUT_S, "the DAG"
        )
        yield server
    finally:
        server.stop()


@pytest.fixture()
def browser(tmp_path: Path):
    driver = start_chromium(tmp_path / "chromium-profile")
    try:
        yield driver
    finally:
        driver.quit()


def _run_path(run_id: str) -> str:
    return f"/api/v2/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id, safe='')}"


def _wait_for_run(airflow: AirflowStandalone, run_id: str) -> dict:
    """Poll the run until it ends; a failure names the task states."""

    def finished():
        status, run = airflow.api("GET", _run_path(run_id))
        return run if status == 200 and run["state"] in ("success", "failed") else None

    run = airflow.wait_for(finished, RUN_TIMEOUT_S, f"run {run_id} to finish", interval_s=3)
    if run["state"] != "success":
        _, tis = airflow.api("GET", _run_path(run_id) + "/taskInstances")
        states = {t["task_id"]: t["state"] for t in tis["task_instances"]}
        pytest.fail(f"run {run_id} ended {run['state']}: {states}\n{airflow.log_tail()}")
    return run


def test_trigger_form_runs_the_pipeline_with_the_values_entered(airflow: AirflowStandalone, browser) -> None:
    from llm_decoder_airflow.pipeline import run_id_from_airflow
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from spark_jobs.reporting.html.render import write_html_report

    began = time.monotonic()
    wait = WebDriverWait(browser, UI_TIMEOUT_S)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def css(selector: str):
        return wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, selector)))

    def set_integer(name: str, value: int | str) -> str:
        field = css(f"input[name=element_{name}]")
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(str(value))
        field.send_keys(Keys.TAB)  # blur: the form clamps to the Param's bounds here
        return field.get_attribute("value")

    # Log in (the simple auth manager's generated admin password).
    browser.get(f"{airflow.url}/dags/{DAG_ID}")
    css("input[name=username]").send_keys("admin")
    css("input[name=password]").send_keys(airflow.password())
    css("button[type=submit]").click()

    # The trigger form: an out-of-range integer is clamped on blur, then our two values.
    css("[data-testid=trigger-dag-button]").click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "[data-testid=config-form]")))
    assert set_integer("epochs", 5000) == str(EPOCHS_MAX)
    assert set_integer("epochs", EPOCHS) == str(EPOCHS)
    css("#element_model_kind").click()
    browser.switch_to.active_element.send_keys(MODEL_KIND, Keys.ENTER)
    kind = browser.find_element(By.CSS_SELECTOR, "input[type=hidden][name=element_model_kind]")
    wait.until(lambda _: kind.get_attribute("value") == MODEL_KIND)

    submit = browser.find_element(By.CSS_SELECTOR, "[data-testid=trigger-dag-submit]")
    if not submit.is_enabled():
        empty = [
            e.get_attribute("name")
            for e in browser.find_elements(By.CSS_SELECTOR, "[data-testid=config-form] input[name^=element_]")
            if not e.get_attribute("value")
        ]
        pytest.fail(f"the trigger button is disabled: the form is invalid with its defaults (empty: {empty})")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", css("#element_model_kind"))
    browser.save_screenshot(str(SCREENSHOTS / "trigger_form.png"))
    submit.click()

    wait.until(ec.url_contains(f"/dags/{DAG_ID}/runs/"))
    run_id = urllib.parse.unquote(browser.current_url.split("/runs/", 1)[1].split("?")[0].split("/")[0])

    # Invalid confs never start a run: the API validates them against the Params' schema.
    for conf, complaint in (
        ({"epochs": EPOCHS_MAX + 1}, "greater than the maximum"),
        ({"epochs": "two"}, "not of type"),
    ):
        status, body = airflow.api(
            "POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": conf}
        )
        assert status == 400, (conf, status, body)
        assert "epochs" in body["detail"] and complaint in body["detail"], body

    run = _wait_for_run(airflow, run_id)

    # The run used the form's values: its conf, the rendered config, what it trained.
    assert run["conf"]["epochs"] == EPOCHS and run["conf"]["model_kind"] == MODEL_KIND
    run_dir = Path(run["conf"]["root"]) / "runs" / run_id_from_airflow(run_id)
    config = yaml.safe_load((run_dir / "code" / "config.yaml").read_text())
    assert config["training"]["num_epochs"] == EPOCHS and config["model"]["kind"] == MODEL_KIND
    summary = json.loads((run_dir / "metrics" / "summary.json").read_text())
    assert summary["model_kind"] == MODEL_KIND and summary["epochs"] == EPOCHS
    assert summary["run_id"] == run_id_from_airflow(run_id)
    _, runs = airflow.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns")
    assert runs["total_entries"] == 1  # the refused confs started nothing

    # What a person sees: the finished run and the graph.
    browser.refresh()
    badge = f"//h2[normalize-space()='{run_id}']/following-sibling::span[@data-testid='state-badge']"
    wait.until(ec.text_to_be_present_in_element((By.XPATH, badge), "Success"))
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "[data-testid=table-cell-state]")))
    browser.save_screenshot(str(SCREENSHOTS / "finished_run.png"))
    css("button[aria-label^='Show Graph']").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".react-flow__node")) == 6)
    time.sleep(1)  # the graph fits itself to the view after rendering
    browser.save_screenshot(str(SCREENSHOTS / "dag_graph.png"))

    # The run's report.html opens in the browser with every plot decoded.
    report = run_dir / "metrics" / "report.html"
    if not report.exists():  # until the collect task writes it itself
        write_html_report(str(run_dir))
    browser.get(report.as_uri())
    wait.until(lambda d: d.execute_script("return document.readyState") == "complete")
    widths = browser.execute_script(
        "return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)"
    )
    assert len(widths) >= 2 and all(w > 0 for w in widths), widths
    assert MODEL_KIND in browser.find_element(By.ID, "summary").text
    browser.execute_script("document.getElementById('curves').scrollIntoView()")
    browser.save_screenshot(str(SCREENSHOTS / "report.png"))
    print(f"browser test: run {run_id} succeeded; {time.monotonic() - began:.0f} s after login")
