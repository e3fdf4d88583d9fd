"""report.html in a real headless Chromium: it renders, every embedded figure decodes, a screenshot is kept.

Uses the system Chromium (Debian package ``chromium``) through Playwright's
``executable_path``; Playwright never downloads a browser here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest

from ablate.report import build_report
from tests.report_fixtures import write_study

SCREENSHOT = Path(__file__).resolve().parents[1] / "reports" / "_test_screenshots" / "report.png"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_report_html_renders_without_broken_images(tmp_path):
    from playwright.sync_api import sync_playwright

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rec = write_study(tmp_path / "study")
    out = build_report(rec.name, rec.storage, rec.tracking_uri, tmp_path / "report")
    n_png = len(list((out / "figures").glob("*.png")))

    with sync_playwright() as p:
        # Playwright starts Chromium headless with a fresh temporary profile of its own.
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS, timeout=30_000)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto((out / "report.html").as_uri(), wait_until="load", timeout=30_000)
            images = page.eval_on_selector_all(
                "img", "els => els.map(e => ({complete: e.complete, w: e.naturalWidth, h: e.naturalHeight}))"
            )
            verdict = page.inner_text("#verdict")
            headers = page.eval_on_selector_all("#arms th", "els => els.map(e => e.innerText)")
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()

    assert len(images) == n_png > 0
    broken = [i for i, img in enumerate(images) if not (img["complete"] and img["w"] > 0 and img["h"] > 0)]
    assert broken == [], f"broken images at positions {broken}"
    assert all(u.startswith(("file:", "data:")) for u in requests), "report.html must be self-contained"
    assert "lora+adapter" in verdict and "Holm-adjusted p=" in verdict
    assert {"Δ EM vs baseline [95% CI], p", "verdict"} <= set(headers)
    assert SCREENSHOT.stat().st_size > 10_000
