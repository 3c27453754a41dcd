"""`cdvideo ui` in a real headless browser (Debian's chromium driven by Playwright), on the Shapes model.

Set CDVIDEO_UI_SCREENSHOTS=docs to write a screenshot of each tab (docs/ui-*.png).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from cdvideo.cli import main as cli_main
from cdvideo.videofiles import read_video, video_info

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
REPO = Path(__file__).resolve().parents[1]


def test_ui_without_gradio_is_one_clear_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import fails as when the [ui] extra is not installed
    assert cli_main(["ui"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'cdvideo[ui]'" in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def app(tmp_path):
    pytest.importorskip("gradio", reason="gradio is the optional [ui] extra: pip install 'cdvideo[ui]'")
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "cdvideo.cli", "ui", "--port", str(port), "--workspace", str(tmp_path / "ws")]
    log = open(tmp_path / "ui.log", "w")
    server = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError((tmp_path / "ui.log").read_text()) from None
            time.sleep(0.5)
    yield url, tmp_path / "ws"
    server.terminate()
    server.wait(timeout=30)
    log.close()


@pytest.fixture
def page(app):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent: apt-get install chromium (Debian's browser; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is absent: pip install 'cdvideo[test]'")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(app[0])
        yield page
        browser.close()


def _status(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} textarea").input_value()


def _wait_status(page, elem_id: str, prefixes: tuple[str, ...], timeout_s: float) -> str:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        text = _status(page, elem_id)
        if text.startswith(prefixes):
            return text
        time.sleep(0.5)
    raise AssertionError(f"#{elem_id} still says {_status(page, elem_id)!r}")


def _screenshot(page, name: str) -> None:
    folder = os.environ.get("CDVIDEO_UI_SCREENSHOTS")
    if folder:
        page.screenshot(path=str(Path(folder) / f"ui-{name}.png"), full_page=True)


@pytest.mark.slow
def test_train_then_animate_in_a_real_browser(app, page, tmp_path):
    from cdvideo.demo import write_subject_photos

    url, workspace = app
    # Bad input: the same one line as the command line, in the page.
    page.click("#train-button")
    assert "no photos" in _wait_status(page, "train-status", ("error:",), 30)

    photos = write_subject_photos(tmp_path / "photos", count=4)
    page.locator("#train-photos input[type=file]").set_input_files([str(p) for p in photos])
    page.fill("#train-class textarea", "circle")
    page.get_by_text("settings (blank").click()
    page.fill("#train-steps textarea", "12")
    page.fill("#train-prior textarea", "0")
    page.click("#train-button")
    _wait_status(page, "train-status", ("training",), 60)
    page.click("#train-button")  # a second click while training: refused, not a second run
    page.get_by_text("A training run is already going").first.wait_for(timeout=15_000)
    done = _wait_status(page, "train-status", ("done:", "error:"), 600)
    assert done.startswith("done: concept written to"), done
    _screenshot(page, "train")
    assert [p.name for p in (workspace / "concepts").iterdir()] == ["circle-1"]  # one run, one concept

    page.get_by_role("tab", name="Animate").click()
    page.fill("#animate-prompt textarea", "a circle moving right")
    page.locator("#binding").get_by_text("a <new1> circle moving right").wait_for(timeout=15_000)
    page.fill("#animate-frames textarea", "4")
    page.fill("#animate-steps textarea", "1")
    page.click("#animate-button")
    done = _wait_status(page, "animate-status", ("done", "error:"), 600)
    assert done.startswith("done"), done
    video = page.locator("#animate-video video")
    video.wait_for(timeout=30_000)
    playing = video.evaluate(
        """v => new Promise(resolve => { v.muted = true; v.play().then(
               () => setTimeout(() => resolve({t: v.currentTime, w: v.videoWidth, err: v.error && v.error.code}), 800),
               e => resolve({err: String(e)})); })"""
    )
    assert playing.get("err") is None and playing["t"] > 0 and playing["w"] == 64, playing
    served = tmp_path / "served.mp4"
    served.write_bytes(page.request.get(video.get_attribute("src")).body())
    assert video_info(served)["frames"] == 4
    assert read_video(served).shape[:3] == (4, 64, 64)
    _screenshot(page, "animate")

    page.get_by_role("tab", name="Concepts").click()
    page.get_by_role("button", name="Refresh").click()
    # The table's cells carry a hidden copy of their text: wait for the one a user sees.
    row = page.locator("#concept-table").get_by_text("ws/concepts/circle-1").filter(visible=True)
    row.first.wait_for(timeout=15_000)
    # The newest concept is picked after training, and its model card says how to use it.
    page.locator("#concept-card").get_by_text("--concept circle-1").first.wait_for(timeout=15_000)
    _screenshot(page, "concepts")
    page.get_by_role("tab", name="Evaluate").click()
    _screenshot(page, "evaluate")


def test_a_second_training_run_is_refused_while_one_runs(tmp_path):
    from cdvideo import ui

    ws = ui.Workspace(tmp_path, "shapes")
    fields = ([], True, "circle", "", "1", "", "0", "", 0, [])
    with ui.TRAIN_LOCK:  # a run is going
        assert list(ui.run_training(ws, *fields)) == [(ui.BUSY, "", None, [])]
    assert not (tmp_path / "demo-photos").exists()  # refused before touching anything


def test_bad_page_input_gets_the_command_lines_one_line_error(tmp_path):
    from cdvideo import ui

    ws = ui.Workspace(tmp_path, "shapes")
    status = list(ui.run_training(ws, [], False, "dog", "", "", "", "", "", 0, []))[-1][0]
    assert status.startswith("error: no photos")
    ws_photos = ([], True, "   ", str(tmp_path / "out"), "1", "", "0", "", 0, [])
    cfg = ui.train_config(ws, *ws_photos)
    assert cfg.class_word == "circle" and cfg.steps == 1 and cfg.prior_weight == 0.0
