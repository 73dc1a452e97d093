"""report.html: the page's content, its escaping of untrusted model text, and a real headless browser.

The browser tests drive Debian's chromium over the DevTools protocol; they skip, saying why, when
chromium is not installed (``apt-get install -y chromium``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from atari_vlm.errors import ConfigError, DependencyNotInstalled
from atari_vlm.framestore import FrameStore, content_hash
from atari_vlm.report import render_report, write_report
from atari_vlm.rundir import read_jsonl, run_record
from atari_vlm.runner import run_play
from atari_vlm.spec import RunSpec
from atari_vlm.testing.chromium import Chromium
from atari_vlm.video import VideoWriter
from atari_vlm.workers import action_names, prompt_builder

pytest.importorskip("matplotlib", reason='plots need matplotlib: pip install "atari-vlm[report]"')

HOSTILE = (
    "I pick <script>alert(1)</script> and <img src=x onerror=alert(2)> "
    "</script><script>window.__pwned=1</script><!-- <b>bold</b> ACTION: FIRE"
)
HOSTILE_SPEC = "<img src=x onerror=alert(3)>"


@pytest.fixture(scope="module")
def played(tmp_path_factory):
    """A real run: Pong, random agent, 2 short episodes with videos and no frame store (the viewer's
    frames come from the videos, as in runs recorded before the store)."""
    out = tmp_path_factory.mktemp("report") / "pong"
    spec = RunSpec.build(game="Pong", agent="random", episodes=2, max_steps=40, video=True, frames=False)
    run_play(spec, out)
    return out


DEMO_SETTINGS = dict(
    game="Pong", model="demo", episodes=2, max_steps=5, history_images=1, history_steps=2, video=False
)


@pytest.fixture(scope="module")
def played_demo(tmp_path_factory):
    """A real run of the demo model (scored decoding: probabilities known) with a remembered screen,
    recorded with the frame store and no video."""
    out = tmp_path_factory.mktemp("report") / "demo"
    run_play(RunSpec.build(**DEMO_SETTINGS), out)
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
    store = FrameStore(path)
    system = store.put_text("System: " + HOSTILE)
    image = store.put_image(rng.integers(0, 255, size=(84, 84), dtype=np.uint8))
    sent = {
        "system": system,
        "messages": [
            {
                "role": "user",
                "parts": [
                    {"text": HOSTILE},
                    {"image": image, "shape": [84, 84]},
                    {"image": "../../../etc/hostname", "shape": [1, 1]},  # not a hash: not linked
                    {"text": "ACTION: <name>"},
                ],
            }
        ],
    }
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
            "sent": sent,
            "probs": {"NOOP": 0.25, "FIRE": 0.75, "<b>X</b>": "<i>"} if k == 1 else None,
            # step 1: flags that are not booleans (untrusted files) say nothing; step 2: both flags set
            "usage_estimated": "<b>yes</b>" if k == 1 else k == 2,
            "answer_truncated": 1 if k == 1 else k == 2,
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


def test_each_step_records_what_it_sent(played_demo):
    """The system prompt once (by hash), then every part in order: text verbatim, images by hash of
    PNGs that decode to exactly what was sent, each distinct image stored once."""
    spec = RunSpec.build(**DEMO_SETTINGS)
    system = prompt_builder(spec, action_names(spec)).system_prompt
    steps = read_jsonl(played_demo / "steps.jsonl")
    assert len(steps) == 10
    import cv2

    references = []
    for s in steps:
        sent = s["sent"]
        assert (played_demo / "prompts" / f"{sent['system']}.txt").read_text() == system
        (message,) = sent["messages"]
        assert message["role"] == "user"
        kinds = ["text" if "text" in p else "image" for p in message["parts"]]
        if s["step"] == 1:
            assert kinds == ["image", "text"]
        else:  # the remembered screen, then the current one, then the turn text
            assert kinds == ["text", "image", "text", "image", "text"]
            assert message["parts"][0]["text"] == f"The screen at step {s['step'] - 1}:"
            assert message["parts"][2]["text"] == "The screen now:"
            previous = steps[steps.index(s) - 1]["sent"]["messages"][0]["parts"][-2]["image"]
            assert message["parts"][1]["image"] == previous
        turn = message["parts"][-1]["text"]
        assert "Game state: Your paddle (right)" in turn and turn.endswith("ACTION: <name>.\n")
        if s["step"] > 1:  # the history, verbatim: what this episode's previous step played
            previous_action = steps[steps.index(s) - 1]["action_name"]
            assert f"- step {s['step'] - 1}: {previous_action}\n" in turn
        for part in message["parts"]:
            if "image" in part:
                png = cv2.imread(str(played_demo / "frames" / f"{part['image']}.png"), cv2.IMREAD_UNCHANGED)
                pixels = cv2.cvtColor(png, cv2.COLOR_BGR2RGB) if png.ndim == 3 else png
                assert list(pixels.shape) == part["shape"] == [210, 160, 3]
                assert content_hash(pixels) == part["image"]  # lossless: exactly what was sent
                references.append(part["image"])
        assert (played_demo / "frames" / f"{s['screen']}.png").is_file()
        assert s["obtained"] == "scored" and set(s["probs"]) == set(action_names(spec))
    stored = {p.stem for p in (played_demo / "frames").iterdir()}
    assert len(references) == 18 and set(references) <= stored
    assert len(set(references)) < len(references)  # each remembered screen is stored once
    assert len(list((played_demo / "prompts").iterdir())) == 1


def test_no_frames_records_images_by_shape_only(tmp_path):
    out = tmp_path / "noframes"
    run_play(RunSpec.build(**{**DEMO_SETTINGS, "episodes": 1, "max_steps": 2, "frames": False}), out)
    assert not (out / "frames").exists()
    steps = read_jsonl(out / "steps.jsonl")
    assert "screen" not in steps[0]
    assert steps[0]["sent"]["messages"][0]["parts"][0] == {"image": None, "shape": [210, 160, 3]}
    data = _viewer_data(render_report(out))
    assert data["frames"] == [] and data["episodes"][0]["steps"][0][data["columns"].index("screen")] == -1


def test_the_store_writes_only_inside_the_run_directory(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / "frames").symlink_to(outside)
    with pytest.raises(ConfigError, match="is a link or a file, not a folder"):
        FrameStore(run).put_image(np.zeros((4, 4), np.uint8))
    (run / "frames").unlink()
    (run / "frames").mkdir()
    pixels = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    target = outside / "victim.png"
    target.write_bytes(b"keep me")
    (run / "frames" / f"{content_hash(pixels)}.png").symlink_to(target)  # a link planted at its name
    key = FrameStore(run).put_image(pixels)
    assert target.read_bytes() == b"keep me"
    stored = run / "frames" / f"{key}.png"
    assert not stored.is_symlink() and stored.read_bytes().startswith(b"\x89PNG")


def test_report_shows_what_was_sent(played_demo):
    data = _viewer_data(write_report(played_demo).read_text())
    col = {c: i for i, c in enumerate(data["columns"])}
    spec = RunSpec.build(**DEMO_SETTINGS)
    assert data["actions"] == action_names(spec)
    assert data["systems"] == [prompt_builder(spec, action_names(spec)).system_prompt]
    step = data["episodes"][0]["steps"][1]
    raw = read_jsonl(played_demo / "steps.jsonl")[1]
    system, ((role, parts),) = step[col["sent"]]
    assert system == 0 and role == "user"
    assert [p[0] for p in parts] == [0, 1, 0, 1, 0]
    assert [data["texts"][i] for i in parts[0][1]] == ["The screen at step 1:"]
    assert data["texts"][parts[1][2]] == "160x210 RGB"
    turn = raw["sent"]["messages"][0]["parts"][-1]["text"]
    assert "\n".join(data["texts"][i] for i in parts[-1][1]) == turn  # line by line, exactly
    assert data["frames"][parts[1][1]] == raw["sent"]["messages"][0]["parts"][1]["image"]
    assert data["frames"][step[col["screen"]]] == raw["screen"]
    probs = step[col["probs"]]
    assert probs == [raw["probs"][a] for a in data["actions"]] and abs(sum(probs) - 1) < 1e-3
    assert all(e["images"] == [] for e in data["episodes"])  # nothing embedded: all by reference
    # Each distinct line once: the interned lines are fewer than the lines they stand for.
    lines = [
        i
        for e in data["episodes"]
        for s in e["steps"]
        for p in s[col["sent"]][1][0][1]
        if p[0] == 0
        for i in p[1]
    ]
    assert len(data["texts"]) < len(lines) / 2


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
    assert "<b>X</b>" not in page and "etc/hostname" not in page
    assert "&lt;img src=x onerror=alert(3)&gt;" in page  # the model spec in the title and banner
    assert "RANDOM WEIGHTS" in page and "demo model: &lt;b&gt;random&lt;/b&gt; weights" in page
    data = _viewer_data(page)
    text_col = data["columns"].index("text")
    assert data["episodes"][0]["steps"][0][text_col] == HOSTILE  # the JSON round-trips exactly
    assert page.count("data:image/png;base64,") == 3  # + latency histogram
    assert data["systems"] == ["System: " + HOSTILE]
    ((_, parts),) = data["episodes"][0]["steps"][0][data["columns"].index("sent")][1]
    assert [data["texts"][i] for i in parts[0][1]] == [HOSTILE]
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


@pytest.fixture
def browser(tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed: apt-get update && apt-get install -y chromium")
    pytest.importorskip("websocket", reason="needs websocket-client (pip install websocket-client)")
    b = Chromium(tmp_path / "profile", CHROMIUM)
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
    assert browser.eval("document.getElementById('f-tokens').textContent") == "100 / 7 / 85"
    assert browser.eval("document.querySelectorAll('script').length") == 2
    assert browser.eval("document.querySelectorAll('img[src=\"x\"], #answer *, b.bad b').length") == 0
    assert browser.eval("typeof window.__pwned") == "undefined"
    assert HOSTILE_SPEC in browser.eval("document.title")
    assert "RANDOM WEIGHTS" in browser.eval("document.querySelector('.banner').textContent")
    assert browser.eval("document.getElementById('f-obtained').textContent") == "parsed from the answer"
    parts = browser.eval("Array.from(document.querySelectorAll('#sent-parts pre')).map(p => p.textContent)")
    assert parts == ["System: " + HOSTILE, HOSTILE, "ACTION: <name>"]
    assert browser.eval("document.querySelectorAll('#sent-parts img').length") == 1  # the bad key: no link
    assert browser.eval("document.querySelector('#sent-parts img').naturalWidth") == 84
    captions = browser.eval("Array.from(document.querySelectorAll('figcaption')).map(c => c.textContent)")
    assert captions == [
        "image 1: 84x84 grayscale",
        "image 2: 1x1 grayscale (not kept: the run was played with --no-frames)",
    ]
    # The bars: two numbers; the hostile name shows as text, its non-number probability as no bar.
    assert browser.eval("document.querySelectorAll('#probs .bar').length") == 2
    assert browser.eval("document.querySelectorAll('#probs b, #probs i:not(:empty)').length") == 0
    browser.eval("document.getElementById('next').click()")
    assert browser.eval("document.getElementById('f-obtained').textContent") == (
        "fallback (no legal action in the answer)"
    )
    assert browser.eval("document.getElementById('probs-note').hidden") is False
    assert browser.eval("document.getElementById('answer').textContent") == (
        "step 2 <i>answer</i>\n[answer cut: it was longer than the backend keeps]"
    )
    assert browser.eval("document.getElementById('f-tokens').textContent") == (
        "100 / 7 / 85 (estimated: the server's count was not believable)"
    )
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


LOADED = "Promise.all(Array.from(document.images).map(i => i.decode().catch(() => 0))).then(() => 1)"
"""Waits until every image of the page has loaded (or failed)."""


def test_stepping_through_what_the_model_was_sent_in_a_real_browser(browser, played_demo, tmp_path):
    """The viewer of a model run: the screen and every image of the request load from the frame
    store, the prompt text is shown whole, the bars are the recorded probabilities."""
    spec = RunSpec.build(**DEMO_SETTINGS)
    steps = read_jsonl(played_demo / "steps.jsonl")
    browser.open(write_report(played_demo))

    def sent_view() -> dict:
        return browser.eval(
            """(() => ({
              label: document.getElementById('step-label').textContent,
              screen: document.getElementById('frame').getAttribute('src'),
              screenWidth: document.getElementById('frame').naturalWidth,
              texts: Array.from(document.querySelectorAll('#sent-parts pre.part')).map(p => p.textContent),
              images: Array.from(document.querySelectorAll('#sent-parts img')).map(
                i => [i.getAttribute('src'), i.naturalWidth, i.naturalHeight, i.loading]),
              bars: Array.from(document.querySelectorAll('#probs .bar i')).map(
                i => parseFloat(i.style.width)),
              chosen: Array.from(document.querySelectorAll('#probs span.chosen')).map(c => c.textContent)[0],
              obtained: document.getElementById('f-obtained').textContent,
            }))()"""
        )

    browser.eval(LOADED)
    first = sent_view()
    assert first["label"] == "step 1 / 5" and first["screen"] == f"frames/{steps[0]['screen']}.png"
    assert first["screenWidth"] == 160
    assert first["obtained"] == "scored (the likeliest legal action)"
    expected = [steps[0]["probs"][a] * 100 for a in action_names(spec)]
    assert first["bars"] == pytest.approx(expected, abs=0.06) and first["chosen"] == steps[0]["action_name"]
    browser.key("ArrowRight", 39)
    browser.eval(LOADED)
    second = sent_view()
    parts = steps[1]["sent"]["messages"][0]["parts"]
    assert second["label"] == "step 2 / 5"
    assert second["texts"] == [p["text"] for p in parts if "text" in p]  # verbatim, in order
    assert [i[0] for i in second["images"]] == [f"frames/{p['image']}.png" for p in parts if "image" in p]
    assert all(i[1:] == [160, 210, "lazy"] for i in second["images"])  # decoded, as sent
    summary = browser.eval("document.querySelector('#sent-parts details summary').textContent")
    system = prompt_builder(spec, action_names(spec)).system_prompt
    assert summary == f"system prompt ({len(system)} characters)"
    browser.eval("document.querySelector('#sent-parts details').open = true")
    assert browser.eval("document.querySelector('#sent-parts details pre').textContent") == system
    browser.key("ArrowRight", 39)  # the system prompt stays open while stepping
    assert browser.eval("document.querySelector('#sent-parts details').open") is True
    shot = Path(os.environ.get("ATARI_VLM_SCREENSHOT_DIR", tmp_path)) / "report_sent.png"
    browser.send(
        "Emulation.setDeviceMetricsOverride", width=1200, height=2400, deviceScaleFactor=1, mobile=False
    )
    browser.screenshot(shot)
    assert browser.errors() == []


def test_overwrite_clears_the_old_runs_frame_store_and_keeps_other_files(tmp_path):
    out = tmp_path / "run"
    first = RunSpec.build(game="Pong", agent="random", seed=1, episodes=1, max_steps=5, video=False)
    run_play(first, out)
    old = set((out / "frames").iterdir())
    (out / "frames" / "notes.md").write_text("mine")  # not the store's: kept
    run_play(first.replace(seed=2), out, overwrite=True)
    screens = {json.loads(line)["screen"] + ".png" for line in (out / "steps.jsonl").open()}
    stored = {p.name for p in (out / "frames").iterdir()}
    assert old and stored == screens | {"notes.md"}  # only the new run's frames, none left behind
