"""Decisions per second with N games against an OpenAI-compatible server that answers after L seconds.

N Pong games play at once through the real path (``rollout.play_episodes``, ``VLMAgent``,
``OpenAICompatVLM`` with ``concurrency=N``, JPEG data URLs, the SDK's HTTP pool) against
``atari_vlm.testing.openai_server`` on 127.0.0.1, started as a separate process (as a real server is;
in-thread it would share the client's GIL). Ideal is N / L decisions per second; target >= 0.9 of it.

    python benchmarks/api_throughput.py --games 1 4 16 64 --latency 0.2 --repeats 3

The rate is taken while every game is playing (see ``_common.SteadyClock``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Iterator

from _common import machine, median, pong_workers, print_table, steady_rate

from atari_vlm.models.openai_compat import HTTP_BACKENDS, OpenAICompatVLM


@contextlib.contextmanager
def server_process(latency_s: float) -> Iterator[str]:
    """The fake server in its own process; yields its base URL."""
    command = [sys.executable, "-m", "atari_vlm.testing.openai_server"]
    command += ["--port", "0", "--latency", str(latency_s), "--reply", "ACTION: NOOP"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("LISTENING "):
            raise RuntimeError(f"the server did not start: {line!r}")
        yield f"http://127.0.0.1:{int(line.split()[1])}/v1"
    finally:
        process.terminate()
        process.wait(timeout=10)


async def measure(base_url: str, games: int, steps: int, backend: str) -> float:
    vlm = OpenAICompatVLM(
        model="bench", base_url=base_url, concurrency=games, timeout_s=60, http_backend=backend
    )
    try:
        return await steady_rate(pong_workers(vlm, max_steps=steps), games)
    finally:
        await vlm.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--games", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--latency", type=float, default=0.2, help="server answer delay L in seconds")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="decisions per game (default 2N + 25: long enough to outlast the staggered start of N games)",
    )
    parser.add_argument(
        "--http-backend",
        nargs="+",
        default=["auto"],
        choices=HTTP_BACKENDS,
        help="the SDK's HTTP transport(s); several are measured in turn within each repeat",
    )
    args = parser.parse_args()
    print(f"# api_throughput: L = {args.latency * 1000:.0f} ms; {machine()}")
    rows = []
    with server_process(args.latency) as base_url:
        for n in args.games:
            steps = args.steps or 2 * n + 25
            rates: dict[str, list[float]] = {b: [] for b in args.http_backend}
            for _ in range(args.repeats):
                for backend in args.http_backend:
                    rates[backend].append(asyncio.run(measure(base_url, n, steps, backend)))
            ideal = n / args.latency
            for backend, measured in rates.items():
                ratios = [r / ideal for r in measured]
                row = (backend, n, steps, median(measured), ideal, median(ratios), min(ratios), max(ratios))
                rows.append(row)
    headers = ["http", "games N", "steps/game", "decisions/s", "ideal N/L", "ratio (median)", "min", "max"]
    print_table(headers, rows)


if __name__ == "__main__":
    main()
