"""A finished tiny study in the MLflow UI: a real ``mlflow server`` on 127.0.0.1 and headless Chromium.

Over REST: the experiment is a model-training experiment with the question, the verdict and the
report's path as its description; arm runs carry the comparison as metrics (equal to the report's
summary.csv); trial runs list the splits they read as dataset inputs. In the browser: the runs
table of the experiment with every arm's run, kept as reports/_test_screenshots/mlflow_ui.png.
"""

from __future__ import annotations

import csv
import urllib.parse
import urllib.request

import optuna
import pytest

from tests.test_report_browser import CHROMIUM, FLAGS, SCREENSHOT
from tests.test_report_mlflow_server import mlflow_server
from tests.tiny_study import STUDY, finished_study

SHOT = SCREENSHOT.with_name("mlflow_ui.png")
ARMS = ("lora", "lora+adapter", "matched-lora")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    root = finished_study(tmp_path_factory)
    log_path = tmp_path_factory.mktemp("ui") / "server.log"
    with mlflow_server(f"sqlite:///{root}/mlflow.db", root, log_path) as base:
        yield root, base


def test_experiment_kind_description_arm_metrics_and_datasets_over_rest(server):
    from mlflow import MlflowClient

    root, base = server
    client = MlflowClient(base)  # through the server's REST API, as the UI reads it
    exp = client.get_experiment_by_name(STUDY)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    note = exp.tags["mlflow.note.content"]
    report = root / "reports" / STUDY
    assert note.startswith("**Question:** LoRA+bottleneck adapter vs LoRA-only")
    assert "Primary family" in note and "lora+adapter vs LoRA-only [primary]" in note
    assert str(report / "report.html") in note

    with (report / "summary.csv").open(newline="") as f:
        rows = {r["arm"]: r for r in csv.DictReader(f)}
    arm_runs = {
        r.data.tags["arm"]: r for r in client.search_runs([exp.experiment_id], "tags.`ablate.level` = 'arm'")
    }
    assert set(arm_runs) == set(ARMS) == set(rows)
    for arm, run in arm_runs.items():
        m, row = run.data.metrics, rows[arm]
        assert m["test_em_mean"] == pytest.approx(float(row["em_mean"]))
        assert run.data.tags["mlflow.note.content"].startswith(f"{arm}: best configuration ")
        if arm == "lora":
            assert m["delta_test_em"] == 0.0 and "delta_test_em_lo" not in m
        else:
            got = (m["delta_test_em"], m["delta_test_em_lo"], m["delta_test_em_hi"])
            assert got == pytest.approx(
                (float(row["delta_diff"]), float(row["delta_lo"]), float(row["delta_hi"]))
            )

    trials = client.search_runs([exp.experiment_id], "tags.`ablate.level` = 'trial'", max_results=1000)
    # 3 arms x (3 search trials + 2 seeds), and lora+adapter's LoRA settings alone on the 2 seeds
    assert len(trials) == 3 * (3 + 2) + 2
    rows_per_split = {"train": 64, "validation": 16, "test": 16}  # budget=smoke
    for run in trials:
        inputs = {d.tags[0].value: d.dataset for d in run.inputs.dataset_inputs}
        # a search trial never reads the test split; a replicate (or LoRA-alone) run reads all three
        want = {"train", "validation"} | ({"test"} if run.data.tags["phase"] != "search" else set())
        assert set(inputs) == want, (run.data.tags["phase"], set(inputs))
        for split, ds in inputs.items():
            assert ds.name == f"arithmetic.{split}" and ds.source_type == "code" and len(ds.digest) == 12
            assert f'"num_rows": {rows_per_split[split]}' in ds.profile
    digests = {(d.dataset.name, d.dataset.digest) for r in trials for d in r.inputs.dataset_inputs}
    assert len(digests) == 3  # every trial read the very same three splits


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_runs_table_shows_every_arm_in_chromium(server):
    from mlflow import MlflowClient
    from playwright.sync_api import sync_playwright

    root, base = server
    exp_id = MlflowClient(base).get_experiment_by_name(STUDY).experiment_id
    # MLflow 3.17's UI picks GenAI vs model training from its own toggle (default GenAI) or this
    # parameter, not from the experiment's kind tag: the link `ablate study` prints carries it
    url = f"{base}/#/experiments/{exp_id}/runs?" + urllib.parse.urlencode(
        {"workflowType": "machine_learning"}
    )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS, timeout=30_000)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(url, wait_until="load", timeout=60_000)
            page.get_by_text("matching runs").wait_for(timeout=60_000)
            study_cell = page.locator("[role=gridcell]", has_text=STUDY).first
            study_cell.locator("button").first.click()  # unfold the study run: its arm runs
            for arm in ARMS:
                page.locator("[role=gridcell] a", has_text=arm).first.wait_for(timeout=30_000)
            names = page.eval_on_selector_all("[role=gridcell] a", "els => els.map(e => e.innerText.trim())")
            headers = page.eval_on_selector_all(
                "[role=columnheader]", "els => els.map(e => e.innerText.trim())"
            )
            description = page.get_by_text("Question:").first.inner_text()
            SHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOT), full_page=True)
        finally:
            browser.close()
    assert {STUDY, *ARMS} <= set(names)
    assert {"Run Name", "Dataset"} <= set(headers)
    assert "Question:" in description
    assert SHOT.stat().st_size > 10_000
