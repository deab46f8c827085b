"""Start a throw-away JupyterLab server and a headless Chromium for the browser test.

Nothing is downloaded: the browser is the system's /usr/bin/chromium driven by the `playwright`
Python package (never `playwright install`), and JupyterLab runs from this interpreter with its
own temporary settings, workspace and data folders, bound to 127.0.0.1 with a random token.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SERVER_START_S = 60  # JupyterLab cold start on a loaded 2-core machine takes ~5-15 s


def missing_requirements() -> str | None:
    """Why the browser test cannot run here, or None."""
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} not found (Debian: apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is missing (pip install playwright)"
    try:
        import anywidget  # noqa: F401  (plotly>=6 FigureWidget renders through anywidget)
    except ImportError:
        return "anywidget is missing (pip install anywidget); plotly FigureWidget needs it"
    return None


REPO = Path(__file__).resolve().parents[1]
VIEWPORT = {"width": 1400, "height": 1000}


@contextmanager
def notebook_page(tmp_path: Path, notebook: str) -> Iterator[tuple["LabServer", object]]:
    """(server, page): JupyterLab in smoke mode serving a copy of notebooks/<notebook>, and a
    headless Chromium page. Skips the test, with the reason, when the browser cannot run."""
    import shutil

    import pytest

    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(REPO / "notebooks" / notebook, root / notebook)
    cache = os.environ.get("FIDDLER_NB_CACHE") or str(tmp_path / "cache")
    with jupyter_lab(root, {"FIDDLER_NB_CACHE": cache, "FIDDLER_NB_MODE": "smoke"}) as server, \
            sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                     headless=True)
        try:
            yield server, browser.new_page(viewport=VIEWPORT)
        finally:
            browser.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class LabServer:
    url: str  # http://127.0.0.1:PORT
    token: str
    root: Path
    log: Path

    def notebook_url(self, name: str) -> str:
        return f"{self.url}/lab/tree/{name}?token={self.token}"


@contextmanager
def jupyter_lab(root: Path, env: dict[str, str]) -> Iterator[LabServer]:
    """A JupyterLab server over `root`; stopped (process group) on exit."""
    port, token = free_port(), secrets.token_hex(16)
    state = root.parent / "lab_state"
    for sub in ("settings", "workspaces", "data", "config", "runtime"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    news = state / "settings" / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True, exist_ok=True)  # no "get notified about Jupyter news?" toast
    (news / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    env = dict(os.environ, **env, JUPYTER_CONFIG_DIR=str(state / "config"),
               JUPYTER_DATA_DIR=str(state / "data"), JUPYTER_RUNTIME_DIR=str(state / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(state / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(state / "workspaces"))
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.open_browser=False",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.extension_manager=readonly"]  # no registry queries from the lab
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # CI containers run as root
    log = root.parent / "jupyterlab.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    server = LabServer(f"http://127.0.0.1:{port}", token, root, log)
    try:
        _wait_ready(server, proc)
        yield server
    finally:
        _stop(proc)


def _wait_ready(server: LabServer, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {proc.returncode}:\n{server.log.read_text()}")
        try:
            with urllib.request.urlopen(f"{server.url}/api/status?token={server.token}", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab not ready after {SERVER_START_S} s:\n{server.log.read_text()}")


def _stop(proc: subprocess.Popen) -> None:
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the kernels it started
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def plot_points(page, selector: str) -> int:
    """Markers drawn in the first plotly plot under `selector` (0 if none yet)."""
    return page.evaluate(
        """sel => {
            const plot = document.querySelector(sel + ' .js-plotly-plot');
            return plot ? plot.querySelectorAll('.scatterlayer .point').length : 0;
        }""", selector)


def wait_until(predicate, timeout_s: float, what: str, poll_s: float = 0.5):
    """predicate()'s first truthy value, polling; AssertionError naming `what` on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def run_all_cells(page, server: LabServer, notebook: str, kernel_start_s: float = 60) -> None:
    """Open `notebook` in JupyterLab, wait for an idle kernel, then Run > Run All Cells."""
    page.goto(server.notebook_url(notebook))
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    wait_until(lambda: "Idle" in page.locator("#jp-main-statusbar").inner_text(), kernel_start_s,
               "the kernel to start")
    page.click(".lm-MenuBar-item:has-text('Run')")
    page.click(".lm-Menu-item:has-text('Run All Cells')")
