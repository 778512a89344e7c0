"""JupyterLab, tested in a real browser: headless Chromium (Debian's ``chromium``, driven by Playwright; no browser
is ever downloaded) opens JupyterLab on a free local port, runs ``00_data`` with the smoke parameters and checks
that its outputs appear without an error, then runs ``06_talk_and_watch`` and types into its chat box until a
reply appears. Screenshots go to ``build/screenshots/``. Skipped, with the reason, only when Chromium or
Playwright cannot be had (``.ci/run`` installs Chromium as root)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from p2bot_utils import profile

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "browser"
SHOTS = ROOT / "build" / "screenshots"
CHROMIUM = [os.environ.get("P2BOT_CHROMIUM", ""), "/usr/bin/chromium", "/usr/bin/chromium-browser"]


def _chromium() -> str:
    found = next((c for c in CHROMIUM if c and Path(c).is_file()), None) or shutil.which("chromium")
    if not found:
        pytest.skip("no Chromium: `apt-get install chromium` (as root; .ci/run does it) or set P2BOT_CHROMIUM")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepare(name: str, **overrides) -> Path:
    """The notebook with the smoke profile's values of its declared parameters injected (not executed)."""
    import papermill

    nb = ROOT / "notebooks" / name
    smoke = profile.load_params("smoke")
    params = {k: smoke[k] for k in profile.notebook_parameters(nb) if k in smoke} | overrides
    out = WORK / name
    papermill.execute_notebook(str(nb), str(out), parameters=params, prepare_only=True, progress_bar=False,
                               kernel_name="python3")
    return out


def _tiny_models(root: Path) -> Path:
    """Smoke-sized saved models where notebook 06 looks for them (``talk_runs_dir``): a fresh clone's tests run
    before any notebook has trained one."""
    from p2bot_utils.receiver import Receiver, ReceiverConfig
    from p2bot_utils.transmitter_train import build_transmitter

    model = build_transmitter("tiny-gpt2", "full", max_len=96, max_reply_tokens=8)
    model.save_pretrained(root / "transmitter")
    model.save_pretrained(root / "selfplay-p2bot")
    Receiver.from_backbone(ReceiverConfig(backbone="tiny-bert", max_length=24)).save_pretrained(root / "receiver")
    return root


def _settings(folder: Path) -> Path:
    """JupyterLab user settings for the test: every cell in the page (no windowing), no news pop-up."""
    for plugin, values in {"@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
                           "@jupyterlab/apputils-extension/notification": {"fetchNews": "false"}}.items():
        path = folder / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def lab():
    """A JupyterLab server on a free port, serving prepared copies of notebooks 00 and 06; and a browser."""
    chromium = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        pytest.skip(f"playwright is not installed ({e}); ./run_tests.sh installs it")
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    SHOTS.mkdir(parents=True, exist_ok=True)
    models = _tiny_models(WORK / "models")
    notebooks = {"00": _prepare("00_data.ipynb"),
                 "06": _prepare("06_talk_and_watch.ipynb", talk_runs_dir=str(models), talk_watch_turns=1)}
    port, token = _free_port(), "p2bot-browser-test"
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # inline figures, as for a person
    env |= {"JUPYTERLAB_SETTINGS_DIR": str(_settings(WORK / "settings")), "JUPYTER_RUNTIME_DIR": str(WORK / "rt")}
    log = (WORK / "jupyterlab.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
                               f"--ServerApp.port={port}", "--ServerApp.ip=127.0.0.1", "--ServerApp.port_retries=0",
                               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={WORK}",
                               f"--LabApp.workspaces_dir={WORK / 'workspaces'}",  # not the user's saved layout
                               "--LabApp.expose_app_in_browser=True"],  # the test runs Lab's own commands
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    pytest.fail(f"JupyterLab did not start; see {WORK / 'jupyterlab.log'}")
                time.sleep(0.5)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            yield {"browser": browser, "url": lambda nb: f"{base}/lab/tree/{nb.name}?token={token}",
                   "notebooks": notebooks}
            browser.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


KERNEL = """() => { const w = window.jupyterapp.shell.currentWidget;
    const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
    return k ? [k.id, k.status, k.connectionStatus].join(' ') : ''; }"""
STATE = """() => {
    const w = window.jupyterapp.shell.currentWidget, cells = w.content.model.cells;
    let code = 0, ran = 0;
    for (let i = 0; i < cells.length; i++) {
        const c = cells.get(i);
        if (c.type === 'code') { code++; if (c.executionCount !== null) ran++; }
    }
    const errors = [...document.querySelectorAll('.jp-OutputArea-output')]
        .filter(e => e.dataset.mimeType === 'application/vnd.jupyter.error'
                     || e.textContent.includes('Traceback (most recent call last)'))
        .map(e => e.textContent.slice(0, 500));
    return {code, ran, kernel: w.sessionContext.session.kernel.status, errors,
            outputs: document.querySelectorAll('.jp-OutputArea-output').length,
            images: document.querySelectorAll('.jp-OutputArea-output img').length};
}"""


def _run_all(page, timeout_s: float = 300) -> dict:
    """Run all cells once the notebook's kernel is connected and idle (a run sent earlier is lost), then wait
    until every code cell has an execution count and the kernel is idle. Returns what the page shows."""
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    deadline, seen = time.time() + 120, []
    while not (len(seen) >= 3 and len(set(seen[-3:])) == 1 and seen[-1].endswith("idle connected")):
        if time.time() > deadline:
            pytest.fail(f"the kernel did not come up: {seen[-3:]}")
        seen.append(page.evaluate(KERNEL))
        time.sleep(0.5)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    deadline, state = time.time() + timeout_s, {}
    while time.time() < deadline:
        state = page.evaluate(STATE)
        if state["errors"] or (state["ran"] == state["code"] and state["kernel"] == "idle"):
            return state
        time.sleep(1)
    pytest.fail(f"the notebook did not finish in {timeout_s} s: {state}")


def test_jupyterlab_runs_notebook_00_with_the_smoke_parameters(lab):
    page = lab["browser"].new_page(viewport={"width": 1400, "height": 1600})
    page.goto(lab["url"](lab["notebooks"]["00"]))
    state = _run_all(page)
    page.screenshot(path=str(SHOTS / "jupyterlab_00_data_top.png"))
    assert not state["errors"], state["errors"]
    assert state["outputs"] >= 5 and state["images"] >= 1, state
    page.locator(".jp-OutputArea-output img").first.scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "jupyterlab_00_data_figure.png"))
    shown = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook")  # the notebook in front
    assert state["ran"] == state["code"] and "data_split.json" in shown.inner_text()
    page.close()


def test_chat_widget_answers_what_is_typed(lab):
    page = lab["browser"].new_page(viewport={"width": 1400, "height": 1600})
    page.goto(lab["url"](lab["notebooks"]["06"]))
    state = _run_all(page)
    assert not state["errors"], state["errors"]
    turns = page.locator(".p2bot-chat-log .p2bot-turn")
    scripted = len(profile.load_params("smoke")["talk_messages"])
    assert turns.count() == scripted  # the scripted messages went through the box
    entry = page.locator(".p2bot-chat-entry input")
    entry.scroll_into_view_if_needed()
    entry.fill("do you like jazz music ?")
    entry.press("Enter")
    turns.nth(scripted).wait_for(timeout=60_000)
    last = turns.nth(scripted)
    assert last.locator(".p2bot-you").inner_text() == "you: do you like jazz music ?"
    assert last.locator(".p2bot-reply").count() == 1 and last.locator(".p2bot-beams tr").count() == 3
    assert "Receiver's perception of you" in last.inner_text()
    page.locator(".p2bot-chat-log").scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "jupyterlab_06_chat.png"))
    page.close()
