"""The report of a long run stays light (issue 17's last row, issue 15 item 1): size and time to write.

Plays a real run through ``run_play`` (Pong, the default observation: native frame and state text,
plus one remembered screen and four remembered decisions, so each request holds two images) with an
instant scripted model that answers like a reasoning model (a sentence, then ``ACTION: X``) and
gives a probability for every legal action, so the viewer has everything to show. Every decision's
request is recorded with the frame store (``frames/``, ``prompts/``); no video. Then it writes
``report.html`` ``--repeats`` times and prints the median CPU time of ``write_report``
(``time.process_time``), the page's size, and what the run directory holds.

    python benchmarks/report_size.py --episodes 5 --max-steps 1000 --repeats 3 --browser --compare-recording

``--browser`` also opens the page in headless chromium (load time, JS heap, stepping through the
viewer). ``--compare-recording`` also plays one episode with and without the frame store and prints the CPU
time the recording adds per decision (median of ``--repeats``).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

from atari_vlm.models.base import Completion, Request, Usage
from atari_vlm.models.registry import LoadedModel
from atari_vlm.report import write_report
from atari_vlm.runner import run_play
from atari_vlm.spec import RunSpec

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine


class ScriptedVLM:
    """Answers at once: a short reason, then a legal action in turn, with a probability for each."""

    name = "scripted"

    def __init__(self) -> None:
        self._turn = itertools.count()

    async def generate(self, request: Request) -> Completion:
        n = next(self._turn)
        names = ("NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE")
        pick = names[(n // 7) % len(names)]
        probs = {a: (0.5 if a == pick else 0.1) for a in names}
        text = f"The ball is moving toward my paddle; I line up with it (decision {n}). ACTION: {pick}"
        return Completion(text, Usage(900, 24), latency_s=0.0, model=self.name, choice_probs=probs)

    async def aclose(self) -> None:
        pass


def play(out: Path, episodes: int, max_steps: int, frames: bool) -> float:
    """Play the run; returns CPU seconds per decision."""
    spec = RunSpec.build(
        game="Pong",
        model="scripted",
        episodes=episodes,
        max_steps=max_steps,
        history_images=1,
        history_steps=4,
        video=False,
        frames=frames,
    )
    loaded = LoadedModel(ScriptedVLM(), spec="scripted", provider="test")
    start = time.process_time()
    summary = run_play(spec, out, loaded=loaded)
    return (time.process_time() - start) / max(1, sum(e.steps for e in summary.episodes))


def size(path: Path) -> int:
    return (
        sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        if path.is_dir()
        else path.stat().st_size
    )


def browse(page: Path, profile: Path, steps: int = 200) -> None:
    """Open the page in headless chromium: wall time to the load event, the JS heap, then ``steps``
    steps through the viewer (each showing its screen and images, waited for)."""
    import shutil

    from atari_vlm.testing.chromium import Chromium

    browser = Chromium(profile, shutil.which("chromium") or "chromium")
    try:
        start = time.perf_counter()
        browser.open(page)
        loaded = time.perf_counter() - start
        heap = browser.send("Runtime.getHeapUsage")["usedSize"]
        wait = "Promise.all(Array.from(document.images).map(i => i.decode().catch(() => 0))).then(() => 1)"
        start = time.perf_counter()
        for _ in range(steps):
            browser.key("ArrowRight", 39)
            browser.eval(wait)
        stepped = (time.perf_counter() - start) / steps
        shown = browser.eval("document.querySelectorAll('#sent-parts img').length")
        broken = browser.eval("Array.from(document.images).filter(i => !i.naturalWidth).length")
        print(
            f"chromium: load event after {loaded:.2f} s wall, JS heap {heap / 1e6:.1f} MB; "
            f"{stepped * 1e3:.0f} ms wall per step with its images decoded "
            f"({steps} steps; {shown} request images on the last, "
            f"{broken} broken); errors: {len(browser.errors())}"
        )
    finally:
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--max-steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compare-recording", action="store_true")
    parser.add_argument("--keep", default=None, help="play the run into this folder and leave it there")
    parser.add_argument("--browser", action="store_true", help="also open the page in headless chromium")
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.keep) if args.keep else Path(tmp) / "run"
        play(run, args.episodes, args.max_steps, frames=True)
        steps = (run / "steps.jsonl").read_text(encoding="utf-8").count("\n")
        times = []
        for _ in range(args.repeats):
            start = time.process_time()
            page = write_report(run)
            times.append(time.process_time() - start)
        frames = list((run / "frames").iterdir())
        print(f"decisions: {steps} over {args.episodes} episodes")
        print(
            f"report.html: {page.stat().st_size / 1e6:.2f} MB; "
            f"write_report CPU median {statistics.median(times):.2f} s "
            f"(min {min(times):.2f}, max {max(times):.2f}, {args.repeats} repeats)"
        )
        print(
            f"frames/: {len(frames)} PNGs, {size(run / 'frames') / 1e6:.2f} MB; prompts/: "
            f"{len(list((run / 'prompts').iterdir()))}; steps.jsonl: {size(run / 'steps.jsonl') / 1e6:.2f} MB"
        )
        if args.browser:
            browse(page, Path(tmp) / "profile")
        if args.compare_recording:
            with_store, without = [], []
            for i in range(args.repeats):
                with_store.append(play(Path(tmp) / f"on{i}", 1, args.max_steps, frames=True))
                without.append(play(Path(tmp) / f"off{i}", 1, args.max_steps, frames=False))
            on, off = statistics.median(with_store), statistics.median(without)
            print(
                f"CPU per decision: {on * 1e3:.2f} ms with the frame store, {off * 1e3:.2f} ms with "
                f"--no-frames: {(on - off) * 1e3:.2f} ms added (median of {args.repeats})"
            )


if __name__ == "__main__":
    main()
