"""Fault injection for whole runs: play once against a well-behaved server and once against one
that fails a fraction of calls on command, then compare what each run recorded.

The model's answers depend only on what it is shown, so a run that survived its faults must have
recorded exactly the reference run's steps. Used by the reliability tests and by
``benchmarks/fault_injection.py`` (the figures in RELIABILITY.md).
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from atari_vlm.models.registry import LoadedModel
from atari_vlm.rundir import read_jsonl
from atari_vlm.runner import run_play
from atari_vlm.spec import RunSpec
from atari_vlm.testing.openai_server import serve_in_thread

ACTIONS = ("RIGHT", "LEFT", "FIRE", "NOOP")
TRANSIENT_MIX: tuple[Any, ...] = (
    {"status": 429, "retry_after": "0"},
    429,
    500,
    502,
    503,
    "reset",
    "truncated",
    "not_json",
    "hang",
)


def deterministic_reply(request: dict[str, Any]) -> str:
    """An answer that depends only on the request's last text part (the state of the game)."""
    text = json.dumps(request["messages"][-1]["content"][-1]["text"])
    return f"ACTION: {ACTIONS[sum(map(ord, text)) % len(ACTIONS)]}"


def _model(base_url: str, *, timeout_s: float, max_retries: int) -> LoadedModel:
    from atari_vlm.models.openai_compat import OpenAICompatVLM

    vlm = OpenAICompatVLM(
        model="chaos",
        base_url=base_url,
        api_key="sk-chaos-test-key",
        timeout_s=timeout_s,
        max_retries=max_retries,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
        seed=0,
    )
    return LoadedModel(vlm, "openai:chaos", "openai")


def _play(base_url: str, out: Path, *, game: str, episodes: int, max_steps: int, seed: int, **model: Any):
    loaded = _model(base_url, **model)
    # Free text: the faults are about answers as text (empty, null, cut off), parsed or counted.
    spec = RunSpec.build(
        game=game,
        model=loaded.spec,
        episodes=episodes,
        seed=seed,
        max_steps=max_steps,
        video=False,
        decode="free",
    )
    return run_play(spec, out, loaded=loaded, close_loaded=True)


def per_episode_steps(run_dir: Path) -> dict[int, list[tuple[int, str, float]]]:
    steps = read_jsonl(run_dir / "steps.jsonl")
    episodes = sorted({s["episode"] for s in steps})
    return {
        e: [(s["step"], s["action_name"], s["reward"]) for s in steps if s["episode"] == e] for e in episodes
    }


def run_with_faults(
    *,
    fault_rate: float = 0.2,
    fault_mix: tuple[Any, ...] = TRANSIENT_MIX,
    game: str = "Pong",
    episodes: int = 3,
    max_steps: int = 40,
    seed: int = 0,
    fault_seed: int = 0,
    timeout_s: float = 0.5,
    max_retries: int = 8,
    work_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Play a reference run and a faulty run; report what was injected and what survived."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(work_dir or tmp)
        common = {"game": game, "episodes": episodes, "max_steps": max_steps, "seed": seed}
        model = {"timeout_s": timeout_s, "max_retries": max_retries}
        with serve_in_thread(reply=deterministic_reply) as server:
            _play(server.base_url, root / "reference", **common, **model)
        with serve_in_thread(
            reply=deterministic_reply,
            fault_rate=fault_rate,
            fault_mix=fault_mix,
            fault_seed=fault_seed,
            hang_s=2.0,
        ) as server:
            summary = _play(server.base_url, root / "faulty", **common, **model)
            injected = Counter(
                (r.fault.kind if r.fault.kind != "status" else str(r.fault.status))
                for r in server.requests
                if r.fault is not None
            )
            calls = len(server.requests)
        reference, faulty = per_episode_steps(root / "reference"), per_episode_steps(root / "faulty")
        episodes_recorded = [e["episode"] for e in read_jsonl(root / "faulty" / "episodes.jsonl")]
        lost = sum(len(v) for v in reference.values()) - sum(
            1
            for e, steps in faulty.items()
            for i, s in enumerate(steps)
            if reference.get(e, [])[i : i + 1] == [s]
        )
        return {
            "calls": calls,
            "injected": dict(sorted(injected.items())),
            "injected_total": sum(injected.values()),
            "retries": summary.to_dict()["retries"],
            "episodes_expected": episodes,
            "episodes_completed": len(set(episodes_recorded)),
            "episodes_counted_twice": len(episodes_recorded) - len(set(episodes_recorded)),
            "decisions": summary.to_dict()["decisions"],
            "unparsed": summary.to_dict()["unparsed"],
            "steps_identical_to_reference": faulty == reference,
            "steps_lost_or_changed": lost,
        }
