"""The Airflow trigger form, used the way a person uses it: a real browser on the real stack.

On `make stack` (conftest.py: PostgreSQL, LocalExecutor, separate scheduler and api-server),
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
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from chromium import browser_available, start_chromium  # noqa: E402

DAG_ID = "llm_decoder_local"
# Screenshots go to a scratch folder; `LLM_DECODER_SCREENSHOTS=docs/screenshots` refreshes the
# README's (so a test run never rewrites tracked files by accident).
SCREENSHOTS = Path(os.environ.get("LLM_DECODER_SCREENSHOTS") or tempfile.mkdtemp(prefix="screenshots-"))
# Both differ from the stack's config (conftest.LOCAL_CONFIG). Refreshing the README's pictures
# (configs/local.yaml as it ships) keeps its gpt, so that the report shows the default model.
EPOCHS, MODEL_KIND = 2, ("gpt" if os.environ.get("LLM_DECODER_SCREENSHOTS") else "mlp")
EPOCHS_MAX = 1000  # the epochs Param's maximum (plugins/llm_decoder_airflow/params.py)
RUN_TIMEOUT_S = 600
UI_TIMEOUT_S = 90

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("stack"),
    pytest.mark.timeout(RUN_TIMEOUT_S + 300),
    pytest.mark.skipif(
        not browser_available(), reason="Debian chromium + chromium-driver not installed (apt-get install)"
    ),
]


@pytest.fixture()
def browser(tmp_path: Path):
    driver = start_chromium(tmp_path / "chromium-profile")
    try:
        yield driver
    finally:
        driver.quit()


def _run_path(run_id: str) -> str:
    return f"/api/v2/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id, safe='')}"


def _wait_for_run(stack: Any, run_id: str) -> dict:
    """Poll the run until it ends; a failure names the task states."""
    from launchers.airflow_api import wait_for

    def finished():
        status, run = stack.api.call("GET", _run_path(run_id))
        return run if status == 200 and run["state"] in ("success", "failed") else None

    run = wait_for(finished, RUN_TIMEOUT_S, f"run {run_id} to finish", interval_s=3)
    if run["state"] != "success":
        pytest.fail(f"run {run_id} ended {run['state']}: {stack.api.task_states(DAG_ID, run_id)}")
    return run


def test_trigger_form_runs_the_pipeline_with_the_values_entered(stack: Any, browser) -> None:
    from llm_decoder_airflow.pipeline import run_id_from_airflow
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from spark_jobs.reporting.html.render import write_html_report

    began = time.monotonic()
    stack.api.unpause(DAG_ID)  # DAGs start paused (configs/airflow.env), as in docker compose
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
    browser.get(f"{stack.url}/dags/{DAG_ID}")
    css("input[name=username]").send_keys("admin")
    css("input[name=password]").send_keys(stack.api.password)
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
    run_url = browser.current_url
    run_id = urllib.parse.unquote(run_url.split("/runs/", 1)[1].split("?")[0].split("/")[0])
    # While the run runs, the page would poll the API server every few seconds: a blank page
    # leaves the two cores to the run (the API is polled below instead, every 3 s).
    browser.get("about:blank")

    # Invalid confs never start a run: the API validates them against the Params' schema.
    runs_before = len(stack.api.dag_runs(DAG_ID))
    for conf, complaint in (
        ({"epochs": EPOCHS_MAX + 1}, "greater than the maximum"),
        ({"epochs": "two"}, "not of type"),
    ):
        status, body = stack.api.call(
            "POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": conf}
        )
        assert status == 400, (conf, status, body)
        assert "epochs" in body["detail"] and complaint in body["detail"], body

    run = _wait_for_run(stack, run_id)

    # The run used the form's values: its conf, the rendered config, what it trained.
    assert run["conf"]["epochs"] == EPOCHS and run["conf"]["model_kind"] == MODEL_KIND
    run_dir = Path(run["conf"]["root"]) / "runs" / run_id_from_airflow(run_id)
    config = yaml.safe_load((run_dir / "code" / "config.yaml").read_text())
    assert config["training"]["num_epochs"] == EPOCHS and config["model"]["kind"] == MODEL_KIND
    summary = json.loads((run_dir / "metrics" / "summary.json").read_text())
    assert summary["model_kind"] == MODEL_KIND
    # both epochs, unless max_steps ended training first (configs/local.yaml's 1000 steps do)
    assert summary["epochs"] == EPOCHS or summary["steps"] == config["training"].get("max_steps"), summary
    assert summary["run_id"] == run_id_from_airflow(run_id)
    assert len(stack.api.dag_runs(DAG_ID)) == runs_before  # the refused confs started nothing

    # What a person sees: the finished run and the graph.
    browser.get(run_url)
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
