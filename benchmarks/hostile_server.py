"""What a hostile model server can still do to a run: the server-side cases of issue 17, measured.

Each case plays Pong with ``atari-vlm play`` (in-process) against the project's test server on
127.0.0.1, scripted to misbehave one way, and prints what happened: calls made, what was recorded,
the exit code, wall time, peak memory. The preset ``gpt-4o-mini`` behind ``--base-url`` is priced as
the preset (a proxy for it), so ``--max-cost`` applies. The figures are in RELIABILITY.md
("Hostile servers").

    python benchmarks/hostile_server.py
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import machine, print_table

from atari_vlm.cli import main
from atari_vlm.rundir import read_jsonl
from atari_vlm.testing import serve_in_thread

REPLY = "ACTION: FIRE"
BASE = ["play", "--game", "Pong", "--model", "gpt-4o-mini", "--no-video", "--decode", "free"]


def play(url: str, out: Path, *args: str) -> tuple[int, str, float]:
    """Exit code, what was printed (stdout and stderr) and wall seconds of one ``play``."""
    printed = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        code = main([*BASE, "--base-url", url, "--out", str(out), *args])
    return code, printed.getvalue(), time.perf_counter() - start


def summary(out: Path) -> dict[str, Any]:
    path = out / "summary.json"
    return json.loads(path.read_text()) if path.exists() else {}


def usage_cases(root: Path) -> list[list[Any]]:
    rows = []
    usages: dict[str, Any] = {
        "missing": None,
        "zero": {"prompt_tokens": 0, "completion_tokens": 0},
        "-1e8 tokens": {"prompt_tokens": -100_000_000, "completion_tokens": -100_000_000},
        "strings": {"prompt_tokens": "many", "completion_tokens": "few"},
    }
    for name, usage in usages.items():
        mix = [{"kind": "usage", "usage": usage}]
        with serve_in_thread(reply=REPLY, fault_rate=1.0, fault_mix=mix) as server:
            out = root / f"usage-{len(rows)}"
            code, _, _ = play(server.base_url, out, "--max-steps", "60", "--max-cost", "0.002")
            calls = len(server.requests)
        s = summary(out)
        steps = read_jsonl(out / "steps.jsonl")
        rows.append(
            [
                f"usage {name}, $0.002 budget",
                f"{calls}/60 calls",
                f"exit {code}, spent ${s.get('spent_usd') or 0:.5f}, "
                f"{sum(x['usage_estimated'] for x in steps)} of {len(steps)} steps usage_estimated",
            ]
        )
    return rows


def budget_case(root: Path) -> list[Any]:
    # 8 games. A probe measures one call's cost c; then the 8 first calls are held until all are in
    # flight, every later call hangs, and the budget of 15.5 c lets 7 second calls start and refuses
    # the 8th: the run stops with 7 calls in flight, by construction.
    with serve_in_thread(reply=REPLY, image_tokens=600) as server:
        play(server.base_url, root / "probe", "--max-steps", "1")
    c = summary(root / "probe")["spent_usd"]
    with serve_in_thread(reply=REPLY, image_tokens=600, hold_until=8, hang_s=60.0) as server:
        server.add_faults(*["ok"] * 8, *["hang"] * 64)
        out = root / "budget8"
        code, printed, _ = play(
            server.base_url,
            out,
            *("--episodes", "8", "--num-envs", "8", "--max-steps", "10", "--max-cost", f"{15.5 * c:.8f}"),
        )
        received = len(server.requests)
    s = summary(out)
    said = re.search(r"\$(\d+\.\d+) spent", " ".join(printed.split()))
    return [
        "8 games, budget (15.5 calls) stops with calls in flight",
        f"{received} requests, {len(read_jsonl(out / 'steps.jsonl'))} recorded",
        f"exit {code}, {s.get('cancelled_calls')} counted as cancelled; message says "
        f"${said.group(1) if said else '?'} spent, summary.json spent_usd ${s.get('spent_usd', 0):.4f} "
        f"(one call: ${c:.6f})",
    ]


def timing_cases(root: Path) -> list[list[Any]]:
    rows = []
    with serve_in_thread(reply=REPLY, hang_s=300.0) as server:
        server.add_faults({"kind": "trickle", "trickle_s": 1.0})
        code, printed, wall = play(
            server.base_url, root / "trickle", "--max-steps", "1", "--timeout", "5", "--retry-time", "0"
        )
        deadline = time.monotonic() + 5
        while not server.hung_up and time.monotonic() < deadline:
            time.sleep(0.05)
        rows.append(
            [
                "1 byte a second, --timeout 5 --retry-time 0",
                f"exit {code} after {wall:.1f} s",
                f"server saw the client hang up: {server.hung_up == 1}",
            ]
        )
    with serve_in_thread(reply=REPLY, hang_s=300.0, fault_rate=1.0, fault_mix=["hang"]) as server:
        code, printed, wall = play(
            server.base_url, root / "never", "--max-steps", "1", "--timeout", "2", "--retry-time", "6"
        )
        rows.append(
            [
                "never answers, --timeout 2 --retry-time 6",
                f"exit {code} after {wall:.1f} s, {len(server.requests)} attempts",
                " ".join(printed.split())[-160:],
            ]
        )
    for status in (500, 429):
        with serve_in_thread(reply=REPLY) as server:
            server.add_faults(*[status] * 8)
            out = root / f"outage-{status}"
            code, _, wall = play(server.base_url, out, "--max-steps", "5")
        rows.append(
            [
                f"8 x HTTP {status} without Retry-After (default --retry-time 120)",
                f"exit {code} after {wall:.1f} s",
                f"{summary(out).get('decisions')} decisions, {summary(out).get('retries')} retries",
            ]
        )
    return rows


def malformed_case(root: Path) -> list[Any]:
    bodies: list[Any] = [
        {"choices": [{"message": None}]},
        {"choices": ["ACTION: FIRE"]},
        b'{"choices": [{"message": {"content": "\xff\xfe"}}]}',
        {"choices": [{"message": {"content": 42}}]},
        {"choices": [{"message": {"content": ["UP"]}}]},
        {},
    ]
    with serve_in_thread(reply=REPLY) as server:
        server.add_faults(*({"kind": "body", "body": b} for b in bodies))
        out = root / "malformed"
        code, _, _ = play(server.base_url, out, "--max-steps", "6", "--history-steps", "2")
    s = summary(out)
    return [
        f"{len(bodies)} malformed 200s, --history-steps 2",
        f"exit {code}",
        f"{s.get('decisions')} decisions, {s.get('retries')} retries",
    ]


def size_case(mb: int) -> list[Any]:
    """The server in a process of its own, and the client too, so that the peak RSS is the client's."""
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "atari_vlm.testing.openai_server",
            "--reply",
            REPLY,
            "--reply-padding",
            str(mb * 10**6),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(server.stdout.readline().split()[1])
        code = (
            "import sys, pathlib, tempfile; sys.path.insert(0, 'benchmarks'); import hostile_server as h;"
            f"print(h._size_child('http://127.0.0.1:{port}/v1', {mb}, pathlib.Path(tempfile.mkdtemp())))"
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    finally:
        server.terminate()
        server.wait(timeout=10)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _size_child(url: str, mb: int, root: Path) -> str:
    out = root / "size"
    code, _, _ = play(url, out, "--max-steps", "2", "--retry-time", "0")
    steps = read_jsonl(out / "steps.jsonl") if (out / "steps.jsonl").exists() else []
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, from the parent's peak.
    status = Path("/proc/self/status").read_text()
    rss = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024
    size = (out / "steps.jsonl").stat().st_size if steps else 0
    return json.dumps(
        [
            f"{mb} MB answers" if mb else "short answers (baseline)",
            f"exit {code}, client peak RSS {rss:.0f} MB",
            f"steps.jsonl {size / 1e3:.0f} kB, stored answers {[len(s['text']) for s in steps]} chars, "
            f"answer_truncated {[s['answer_truncated'] for s in steps]}",
        ]
    )


def credentials_case(root: Path) -> list[Any]:
    secrets = ("Secret-PW-1234", "Query-Key-5678")
    with serve_in_thread(reply=REPLY) as server:
        with_user = server.base_url.replace("http://", "http://user1:Secret-PW-1234@")
        code_user, printed_user, _ = play(with_user, root / "cred-a", "--max-steps", "2")
        code_query, printed_query, _ = play(
            f"{server.base_url}?api-key=Query-Key-5678", root / "cred-b", "--max-steps", "2"
        )
    with contextlib.redirect_stdout(io.StringIO()):
        main(["report", str(root / "cred-b")])
    files = [p for p in root.glob("cred-*/**/*") if p.is_file()]
    leaked = [str(p.name) for p in files if any(s in p.read_text(errors="replace") for s in secrets)]
    leaked += ["output"] if any(s in printed_user + printed_query for s in secrets) else []
    return [
        "user:password and ?api-key= in --base-url",
        f"exit {code_user} (refused) / {code_query} (played)",
        f"secret found in {leaked or 'no file and no output'} ({len(files)} files checked)",
    ]


def main_() -> None:
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = [*usage_cases(root), budget_case(root), *timing_cases(root), malformed_case(root)]
        rows += [size_case(0), size_case(10), size_case(20), size_case(100), credentials_case(root)]
    print_table(["case", "what happened", "detail"], rows)


if __name__ == "__main__":
    main_()
