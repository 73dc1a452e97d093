"""report.html: the page's content, its escaping of untrusted model text, and a real headless browser.

The browser tests drive Debian's chromium over the DevTools protocol; they skip, saying why, when
chromium is not installed (``apt-get install -y chromium``).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from atari_vlm.errors import ConfigError, DependencyNotInstalled
from atari_vlm.report import render_report, write_report
from atari_vlm.rundir import run_record
from atari_vlm.runner import run_play
from atari_vlm.spec import RunSpec
from atari_vlm.video import VideoWriter

pytest.importorskip("matplotlib", reason='plots need matplotlib: pip install "atari-vlm[report]"')

HOSTILE = (
    "I pick <script>alert(1)</script> and <img src=x onerror=alert(2)> "
    "</script><script>window.__pwned=1</script><!-- <b>bold</b> ACTION: FIRE"
)
HOSTILE_SPEC = "<img src=x onerror=alert(3)>"


@pytest.fixture(scope="module")
def played(tmp_path_factory):
    """A real run: Pong, random agent, 2 short episodes with videos."""
    out = tmp_path_factory.mktemp("report") / "pong"
    run_play(RunSpec.build(game="Pong", agent="random", episodes=2, max_steps=40, video=True), out)
    return out


def _hostile_run(path: Path, steps: int = 6) -> Path:
    """A run directory written by hand: a model whose answers and name are hostile HTML."""
    (path / "videos").mkdir(parents=True)
    spec = RunSpec.build(game="Pong", agent="vlm", model="local:x", max_steps=steps)
    config = run_record(
        spec, kind="play", model={"spec": HOSTILE_SPEC, "provider": "local", "random_weights": True}
    )
    (path / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(0)
    with VideoWriter(path / "videos" / "episode_0000.mp4", fps=15) as video:
        for _ in range(steps + 1):
            video.add(rng.integers(0, 255, size=(210, 160, 3), dtype=np.uint8))
    lines = []
    for k in range(1, steps + 1):
        record = {
            "episode": 0,
            "step": k,
            "action": 1,
            "action_name": "FIRE",
            "text": HOSTILE if k == 1 else f"step {k} <i>answer</i>",
            "parsed": k != 2,
            "reward": 1.0 if k == 3 else 0.0,
            "return": 1.0 if k >= 3 else 0.0,
            "lives": 0,
            "input_tokens": 100,
            "output_tokens": 7,
            "image_tokens": 85,
            "latency_s": 0.05 * k,
            "retries": 0,
            "cost_usd": 0.0001,
        }
        lines.append(json.dumps(record))
    (path / "steps.jsonl").write_text("\n".join(lines) + "\n")
    episode = {
        "episode": 0,
        "seed": 1,
        "return": 1.0,
        "steps": steps,
        "decisions": steps,
        "unparsed": 1,
        "retries": 0,
        "input_tokens": 100 * steps,
        "output_tokens": 7 * steps,
        "image_tokens": 85 * steps,
        "model_latency_s": 1.0,
        "wall_s": 1.2,
        "terminated": False,
        "truncated": True,
        "video": "videos/episode_0000.mp4",
        "cost_usd": 0.0001 * steps,
    }
    (path / "episodes.jsonl").write_text(json.dumps(episode) + "\n")
    (path / "summary.json").write_text(json.dumps({"warning": "demo model: <b>random</b> weights"}))
    return path


def _viewer_data(page: str) -> dict:
    match = re.search(r'<script type="application/json" id="run-data">(.*?)</script>', page, re.S)
    assert match
    return json.loads(match.group(1))


# --- the page itself -------------------------------------------------------------------------------------


def test_report_of_a_real_run(played):
    path = write_report(played)
    assert path == played / "report.html"
    page = path.read_text()
    assert "Pong played by random" in page and "RANDOM WEIGHTS" not in page
    assert page.count("data:image/png;base64,") == 2  # returns, cumulative reward (no latency: no model)
    data = _viewer_data(page)
    assert [e["episode"] for e in data["episodes"]] == [0, 1]
    for e in data["episodes"]:
        assert len(e["steps"]) == 40 and len(e["images"]) == 40 and e["frame_of_step"] == list(range(40))
    assert "http://" not in page.replace("http://www.w3.org", "") and "https://" not in page  # offline


def test_hostile_text_is_escaped(tmp_path):
    run = _hostile_run(tmp_path / "hostile")
    page = write_report(run).read_text()
    assert page.count("<script") == 2  # the JSON data block and the page's own script, nothing else
    assert "<script>alert(1)" not in page and "<img src=x" not in page and "<!-- <b>" not in page
    assert "&lt;img src=x onerror=alert(3)&gt;" in page  # the model spec in the title and banner
    assert "RANDOM WEIGHTS" in page and "demo model: &lt;b&gt;random&lt;/b&gt; weights" in page
    data = _viewer_data(page)
    text_col = data["columns"].index("text")
    assert data["episodes"][0]["steps"][0][text_col] == HOSTILE  # the JSON round-trips exactly
    assert page.count("data:image/png;base64,") == 3  # + latency histogram
    assert "cost" in page and "$0.0006" in page


def test_frames_are_capped_and_the_page_says_so(played):
    data = _viewer_data(render_report(played, max_frames_per_episode=7))
    e = data["episodes"][0]
    assert len(e["images"]) == 7 and len(e["steps"]) == 40
    assert e["frame_of_step"][0] == 0 and e["frame_of_step"][-1] == 6
    assert all(step <= pos + 1 for pos, step in enumerate(e["frame_step"]))  # never a later frame
    assert "7 of 40 frames embedded" in e["frames_note"]
    data = _viewer_data(render_report(played, max_frames_total=10))  # 2 episodes share 10
    assert [len(e["images"]) for e in data["episodes"]] == [5, 5]


def test_learning_curve_is_plotted(played, tmp_path):
    run = tmp_path / "trained"
    shutil.copytree(played, run)
    rows = [
        {"episode": i * 10, "eval_mean_return": -21 + i, "eval_std": 1.0, "random_mean_return": -20.5}
        for i in range(5)
    ]
    (run / "learning_curve.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert render_report(run).count("data:image/png;base64,") == 3
    assert 'alt="learning curve"' in render_report(run)


def test_bad_inputs(tmp_path, played, monkeypatch):
    with pytest.raises(ConfigError, match="not a run directory"):
        write_report(tmp_path)
    with pytest.raises(ConfigError, match="max_frames_per_episode must be an integer >= 1"):
        render_report(played, max_frames_per_episode=0)
    # A video path from the run data that leaves the run directory is ignored, not read.
    run = tmp_path / "escape"
    shutil.copytree(played, run)
    episodes = [json.loads(line) for line in (run / "episodes.jsonl").read_text().splitlines()]
    episodes[0]["video"] = "../../../../etc/hostname"
    (run / "episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in episodes))
    data = _viewer_data(render_report(run))
    assert data["episodes"][0]["images"] == [] and "No video" in data["episodes"][0]["frames_note"]
    assert len(data["episodes"][1]["images"]) == 40
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(DependencyNotInstalled, match=r'pip install "atari-vlm\[report\]"'):
        render_report(played)


# --- a real browser --------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Chromium:
    """Headless chromium driven over the DevTools protocol (one page, one websocket)."""

    def __init__(self, profile: Path):
        websocket = pytest.importorskip(
            "websocket", reason="needs websocket-client (pip install websocket-client)"
        )
        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1200,1800",
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.is_file() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not start (no DevToolsActivePort)")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            targets = json.load(r)
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self.events: list[dict] = []
        self._id = 0
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")

    def send(self, method: str, **params):
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, event: str, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events:
                if e.get("method") == event:
                    return e
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError(event)

    def eval(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def key(self, key: str, code: int) -> None:
        for kind in ("keyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", type=kind, key=key, code=key, windowsVirtualKeyCode=code)

    def open(self, path: Path) -> None:
        self.send("Page.navigate", url=path.resolve().as_uri())
        self.wait_for("Page.loadEventFired")
        self.eval("1")  # a round trip: every event of the load has arrived

    def errors(self) -> list[dict]:
        bad = []
        for e in self.events:
            method, params = e.get("method"), e.get("params", {})
            if (
                method in ("Runtime.exceptionThrown", "Page.javascriptDialogOpening")
                or (method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"))
                or (method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error")
            ):
                bad.append(e)
        return bad

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))
        return path

    def close(self) -> None:
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def browser(tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed: apt-get update && apt-get install -y chromium")
    b = Chromium(tmp_path / "profile")
    yield b
    b.close()


def _state(b: Chromium) -> tuple[str, str]:
    return b.eval("document.getElementById('step-label').textContent"), b.eval(
        "document.getElementById('frame').src"
    )


def test_viewer_in_a_real_browser(browser, played, tmp_path):
    browser.open(write_report(played))
    assert browser.eval("document.title") == "Pong played by random"
    label, src = _state(browser)
    assert label == "step 1 / 40" and src.startswith("data:image/jpeg;base64,")
    assert browser.eval("document.getElementById('frame').naturalWidth") == 160  # a decoded thumbnail
    browser.eval("document.getElementById('next').click()")
    label2, src2 = _state(browser)
    assert label2 == "step 2 / 40" and src2 != src
    browser.key("ArrowRight", 39)
    assert _state(browser)[0] == "step 3 / 40"
    browser.key("ArrowLeft", 37)
    browser.eval("document.getElementById('prev').click()")
    assert _state(browser)[0] == "step 1 / 40"
    browser.key("End", 35)
    assert _state(browser)[0] == "step 40 / 40"
    browser.eval(
        "var s = document.getElementById('episode'); s.value = '1'; s.dispatchEvent(new Event('change'))"
    )
    assert _state(browser)[0] == "step 1 / 40"
    assert browser.eval("document.getElementById('answer').textContent").startswith("(no answer")
    browser.screenshot(tmp_path / "report.png")
    shot = Path(os.environ.get("ATARI_VLM_SCREENSHOT_DIR", tmp_path)) / "report_random.png"
    browser.screenshot(shot)
    assert browser.errors() == []


def test_hostile_answer_shows_as_text_in_a_real_browser(browser, tmp_path):
    run = _hostile_run(tmp_path / "hostile")
    browser.open(write_report(run))
    assert browser.eval("document.getElementById('answer').textContent") == HOSTILE
    assert browser.eval("document.querySelectorAll('script').length") == 2
    assert browser.eval("document.querySelectorAll('img[src=\"x\"], #answer *, b.bad b').length") == 0
    assert browser.eval("typeof window.__pwned") == "undefined"
    assert HOSTILE_SPEC in browser.eval("document.title")
    assert "RANDOM WEIGHTS" in browser.eval("document.querySelector('.banner').textContent")
    assert browser.eval("document.getElementById('f-parsed').textContent") == "yes"
    browser.eval("document.getElementById('next').click()")
    assert browser.eval("document.getElementById('f-parsed').textContent") == "no (fallback action)"
    assert browser.eval("document.getElementById('answer').textContent") == "step 2 <i>answer</i>"
    shot = Path(os.environ.get("ATARI_VLM_SCREENSHOT_DIR", tmp_path)) / "report_hostile.png"
    browser.screenshot(shot)
    dialogs = [e for e in browser.events if e.get("method") == "Page.javascriptDialogOpening"]
    assert dialogs == [] and browser.errors() == []


def test_a_run_without_video_shows_no_broken_frame_in_a_real_browser(browser, tmp_path):
    run = _hostile_run(tmp_path / "novideo")
    shutil.rmtree(run / "videos")
    browser.open(write_report(run))
    assert browser.eval("document.getElementById('frame').hidden") is True
    assert browser.eval("getComputedStyle(document.getElementById('frame')).display") == "none"
    assert browser.eval("document.getElementById('frame-note').textContent") == "No frame for this step."
    assert browser.errors() == []
