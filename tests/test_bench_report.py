"""The bench's report.html: written when a bench finishes and by ``atari-vlm report <bench dir>``; its
numbers are the results' numbers, every row links to its run's viewer, run data is escaped."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from atari_vlm.cli import main
from atari_vlm.report.bench import costs
from atari_vlm.testing.chromium import Chromium

pytest.importorskip("matplotlib", reason='plots need matplotlib: pip install "atari-vlm[report]"')

HOSTILE_SPEC = "<img src=x onerror=alert(3)>"


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "sweep"
    args = ["bench", "--games", "Pong", "--models", "demo", "--prompts", "basic", "--seeds", "0,1"]
    args += ["--max-steps", "4", "--max-tokens", "6", "--out", str(out)]
    assert main(args) == 0
    return out


def test_cost_per_episode_and_per_point_above_random():
    row = {
        "cost_usd": 0.3,
        "episodes": 3,
        "mean_return": {"point": 5.0},
        "random_same_seeds": {"mean_return": 2.0},
    }
    assert costs(row) == pytest.approx((0.1, 0.1 / 3))
    assert costs({**row, "random_same_seeds": {"mean_return": 5.0}}) == pytest.approx((0.1, None))  # no gain
    assert costs({**row, "random_same_seeds": None}) == pytest.approx((0.1, None))
    assert costs({**row, "cost_usd": None}) == (None, None)


def test_the_bench_report_holds_the_results(bench):
    page = (bench / "report.html").read_text()
    results = json.loads((bench / "results" / "results.json").read_text())
    assert [(r["game"], r["model"]) for r in results["rows"]] == [
        ("Pong", "demo"),
        ("Pong", "expert"),
        ("Pong", "random"),
    ]
    for r in results["rows"]:
        m = r["mean_return"]
        assert f"{m['point']:,.1f} [{m['low']:,.1f}, {m['high']:,.1f}]" in page
        h = r["human_normalized"]
        assert f"{h['point'] * 100:,.1f}% [{h['low'] * 100:,.1f}, {h['high'] * 100:,.1f}]" in page
    # One plot of the human-normalized aggregate, one of Pong's returns.
    assert page.count("data:image/png;base64,") == 2
    assert 'alt="human-normalized score per model and prompt"' in page and 'alt="Pong returns"' in page
    # Every run's viewer is written and linked, by a path inside the bench folder.
    links = [line.split("href='")[1].split("'")[0] for line in page.split("<a ")[1:]]
    assert sorted(links) == [
        "Pong/demo/basic/report.html",
        "Pong/expert/report.html",
        "Pong/random/report.html",
    ]
    assert all((bench / link).is_file() for link in links)
    # Bench runs keep frames for the viewer (the frame store), no videos.
    assert any((bench / "Pong" / "random" / "frames").iterdir())
    assert not any((bench / "Pong" / "random" / "videos").glob("*.mp4"))


def test_report_command_on_a_bench_folder(bench, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(bench, copy)
    (copy / "report.html").unlink()
    (copy / "Pong" / "random" / "report.html").unlink()
    # A run whose model name is hostile HTML: escaped in the table and the plots' labels.
    config_path = copy / "Pong" / "demo" / "basic" / "config.json"
    config = json.loads(config_path.read_text())
    config["model"]["spec"] = HOSTILE_SPEC
    config_path.write_text(json.dumps(config))
    assert main(["report", str(copy)]) == 0
    assert f"report: {copy / 'report.html'}" in capsys.readouterr().out.replace("\n", "")
    page = (copy / "report.html").read_text()
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(3)&gt;" in page
    assert (copy / "Pong" / "random" / "report.html").is_file()  # the missing viewer is written again
    assert "<script" not in page  # a static page
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    message = " ".join(capsys.readouterr().err.split())  # one line once the CLI stops wrapping errors
    assert "is neither a run directory (it has no config.json) nor a bench folder" in message


def test_the_bench_report_in_a_real_browser(bench, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed: apt-get update && apt-get install -y chromium")
    pytest.importorskip("websocket", reason="needs websocket-client (pip install websocket-client)")
    browser = Chromium(tmp_path / "profile", chromium)
    try:
        browser.open(bench / "report.html")
        rows = browser.eval(
            "Array.from(document.querySelectorAll('#results tbody tr')).map("
            "r => Array.from(r.cells).map(c => c.textContent))"
        )
        assert [r[:3] for r in rows] == [
            ["Pong", "demo (RANDOM WEIGHTS)", "basic"],
            ["Pong", "expert", "-"],
            ["Pong", "random", "-"],
        ]
        assert browser.eval("Array.from(document.images).every(i => i.naturalWidth > 600)") is True
        shot = Path(os.environ.get("ATARI_VLM_SCREENSHOT_DIR", tmp_path)) / "report_bench.png"
        browser.screenshot(shot)
        # Follow the model row's link: its viewer opens and steps through what was sent.
        href = browser.eval("document.querySelector('#results tbody tr a').href")
        assert href.endswith("Pong/demo/basic/report.html")
        browser.events.clear()  # the first page's load event is not this one's
        browser.send("Page.navigate", url=href)
        browser.wait_for("Page.loadEventFired")
        browser.eval("1")
        assert browser.eval("document.getElementById('step-label').textContent") == "step 1 / 4"
        assert browser.eval("document.querySelectorAll('#sent-parts img').length") >= 1
        assert browser.errors() == []
    finally:
        browser.close()
