"""Notebook 09 in a real browser: its chat box takes typed text, and the answer streams in.

Runs all cells of a copy of notebooks/09 in JupyterLab (headless Chromium, as test_browser.py),
types a message into the chat box, presses Send and polls the DOM while the answer arrives: the
user's message shows, the assistant's text grows through several lengths (streamed, not one final
update), and the status line ends with "done". Screenshot: reports/browser/chat.png.
Skipped (with the reason) without /usr/bin/chromium or the playwright package.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from browser_helpers import notebook_page, run_all_cells, wait_until

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = "09_your_model.ipynb"
CHAT = ".fnb-chat"  # chat_widgets.CHAT_CLASS
RUN_ALL_S = 180  # kernel start, tiny model, calibration, a 10 s autotune, smoke mode
ANSWER_S = 90  # nbmode smoke chat_tokens (200) on the tiny model, loaded machine
POLL_S = 0.05
MESSAGE = "Hello from the browser"


def test_chat_box_streams_an_answer_in_jupyterlab(tmp_path):
    shot = tmp_path / "chat.png"
    with notebook_page(tmp_path, NOTEBOOK) as (server, page):
        try:
            lengths, user_shown, status = _drive(page, server)
            page.locator(CHAT).scroll_into_view_if_needed()
            page.screenshot(path=str(shot))
        except BaseException:
            page.screenshot(path=str(shot), full_page=True)
            raise
        finally:
            _keep(shot)
    assert user_shown, "the typed message is not in the chat history"
    assert lengths and lengths[-1] > 0, "no assistant text appeared"
    assert len(set(lengths)) >= 2, f"the answer arrived in one piece, not streamed: {lengths}"
    assert "done:" in status, f"status line after the answer: {status!r}"


def _drive(page, server) -> tuple[list[int], bool, str]:
    """Run all cells, type, Send; (assistant text lengths seen, user message shown, status)."""
    run_all_cells(page, server, NOTEBOOK)
    page.wait_for_selector(f"{CHAT} .widget-text input", timeout=RUN_ALL_S * 1000)
    box = page.locator(CHAT)
    box.scroll_into_view_if_needed()
    box.locator(".widget-text input").press_sequentially(MESSAGE)
    box.locator("button:has-text('Send')").click()
    wait_until(lambda: MESSAGE in " ".join(box.locator(".fnb-chat-user").all_inner_texts()),
               ANSWER_S, "the user's message in the history", poll_s=POLL_S)
    lengths: list[int] = []
    deadline = time.monotonic() + ANSWER_S
    while time.monotonic() < deadline:
        texts = box.locator(".fnb-chat-assistant").all_inner_texts()
        if texts:
            lengths.append(len(texts[-1]))
        if "done:" in box.inner_text():
            break
        time.sleep(POLL_S)
    user_shown = MESSAGE in " ".join(box.locator(".fnb-chat-user").all_inner_texts())
    return lengths, user_shown, box.inner_text()


def _keep(shot: Path) -> None:
    if shot.is_file():
        reports = REPO / "reports" / "browser"
        reports.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, reports / "chat.png")
