"""Notebook 03 in a real browser: JupyterLab + headless Chromium, the tuner moved and re-run.

Runs all cells of a copy of notebooks/03 in JupyterLab, waits for the tuner (ipywidgets) and its
plotly FigureWidget to render, moves the budget slider one step with the keyboard, presses
"Measure this budget" and checks the plot in the DOM gained a point and the status line names
the new budget. A screenshot goes to the test's tmp folder and reports/browser/screenshot.png.
Skipped (with the reason) without /usr/bin/chromium or the playwright package.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from browser_helpers import notebook_page, plot_points, wait_until

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = "03_tune_the_gpu_expert_budget.ipynb"
TUNER = ".fnb-tuner"  # widgets.CSS_CLASS
RUN_ALL_S = 180  # kernel start + model build + calibration + a 5-budget sweep, smoke mode
CLICK_S = 60  # one measured point on the tiny model
FIGURES = 2  # plotly figures notebook 03 shows once every cell ran: the tuner's, the breakdown


def _budget_readout(page) -> int:
    text = page.locator(f"{TUNER} .widget-readout").first.inner_text()
    return int(re.sub(r"\D", "", text))


def test_tuner_renders_and_reruns_in_jupyterlab(tmp_path):
    shot = tmp_path / "screenshot.png"
    with notebook_page(tmp_path, NOTEBOOK) as (server, page):
        try:
            before, after, budget, status, errors = _drive(page, server, shot)
        except BaseException:
            page.screenshot(path=str(shot), full_page=True)  # what the page showed at failure
            _keep(shot)
            raise
    _keep(shot)
    assert after == before + 1, f"the plot had {before} points and now has {after}"
    assert f"budget {budget + 1} experts" in status, f"status line after the click: {status!r}"
    assert errors.strip() == "", f"the tuner showed an error: {errors!r}"


def _drive(page, server, shot: Path) -> tuple[int, int, int, str, str]:
    """Run all cells, move the slider, click Measure; (points before, after, budget, status,
    error line)."""
    page.goto(server.notebook_url(NOTEBOOK))
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    wait_until(lambda: "Idle" in page.locator("#jp-main-statusbar").inner_text(), 60,
          "the kernel to start")
    page.click(".lm-MenuBar-item:has-text('Run')")
    page.click(".lm-Menu-item:has-text('Run All Cells')")

    page.wait_for_selector(f"{TUNER} .js-plotly-plot", timeout=RUN_ALL_S * 1000)
    wait_until(lambda: page.locator(".jp-Notebook .js-plotly-plot").count() >= FIGURES,
          RUN_ALL_S, "the last cell's figure (all cells run)")
    before = plot_points(page, TUNER)
    assert before > 0, "the sweep cell drew no points in the tuner plot"
    budget = _budget_readout(page)

    page.locator(f"{TUNER} .noUi-handle").first.focus()
    page.keyboard.press("ArrowRight")  # one step up
    wait_until(lambda: _budget_readout(page) == budget + 1, 10, "the slider to move")
    page.click(f"{TUNER} button:has-text('Measure this budget')")

    after = wait_until(lambda: plot_points(page, TUNER) > before and plot_points(page, TUNER),
                  CLICK_S, "a new point in the tuner plot")
    status = page.locator(f"{TUNER} .fnb-tuner-status").first.inner_text()
    page.locator(TUNER).scroll_into_view_if_needed()
    page.screenshot(path=str(shot))
    errors = page.locator(f"{TUNER} .fnb-tuner-error").first.inner_text()
    return before, after, budget, status, errors


def _keep(shot: Path) -> None:
    """Copy the screenshot to reports/browser/screenshot.png (git-ignored)."""
    if shot.is_file():
        reports = REPO / "reports" / "browser"
        reports.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, reports / "screenshot.png")
