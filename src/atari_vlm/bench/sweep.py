"""A benchmark sweep: every game x model x prompt on the same seeds under one protocol, with the
random agent on those seeds too, each combination in its own run directory, then the results tables.

Resumable: a combination whose run is complete is skipped, an interrupted one is resumed (finished
episodes kept, the interrupted one replayed), so rerunning the same command finishes the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atari_vlm.bench.protocols import Protocol, load_protocol
from atari_vlm.bench.results import write_results
from atari_vlm.errors import ConfigError
from atari_vlm.executors import EXECUTORS, RayExecutor, ray_session
from atari_vlm.games import resolve_game
from atari_vlm.models.registry import LoadedModel, ModelOptions, load_model
from atari_vlm.rundir import read_jsonl
from atari_vlm.runner import PlaySettings, RunSummary, run_play


def parse_seeds(text: str) -> tuple[int, ...]:
    """ "0-4" -> (0, 1, 2, 3, 4); "1,5,9" -> (1, 5, 9); both may mix ("0-2,7")."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise ConfigError(f"seeds must look like 0-4 or 1,5,9 (non-negative integers), got {text!r}")
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        if high < low:
            raise ConfigError(f"seed range {part!r} runs backwards; write it low-high")
        seeds.extend(range(low, high + 1))
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds repeat in {text!r}: every seed once, please")
    return tuple(seeds)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"


@dataclass(frozen=True)
class BenchSpec:
    """What to sweep. ``protocol`` is a built-in name, a file, or ``None`` for the env defaults."""

    out: Path
    games: tuple[str, ...]
    models: tuple[str, ...]
    prompts: tuple[str, ...] = ("basic",)
    seeds: tuple[int, ...] | None = None
    protocol: str | None = None
    max_steps: int | None = None  # a cap on decisions, for quick looks (results mark capped runs)
    env: dict[str, Any] = field(default_factory=dict)  # image settings: resize_shape, grayscale, ...
    model_options: ModelOptions = field(default_factory=ModelOptions)
    num_envs: int = 1
    video: bool = False
    max_tokens: int | None = None
    temperature: float = 0.0
    max_cost_usd: float | None = None  # for the whole sweep in this invocation; it stops where reached
    executor: str = "local"  # "ray": each combination's episodes spread over Ray workers
    ray_address: str | None = None


@dataclass
class Combination:
    game: str
    agent: str
    model: str
    prompt: str
    out: Path


def protocol_settings(protocol: Protocol | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Env options and agent options that a protocol fixes."""
    if protocol is None:
        return {}, {}
    env = {
        "frame_skip": protocol.frame_skip,
        "repeat_action_probability": protocol.repeat_action_probability,
        "full_action_space": protocol.full_action_space,
        "noop_max": protocol.noop_max,
        "max_episode_frames": protocol.max_episode_frames,
        "total_env_steps": protocol.total_env_steps,
        "reset_on_game_over": protocol.reset_on_game_over,
        "decision_interval": protocol.decision_interval,
        "filler_action": protocol.filler_action,
    }
    agent = {"history_steps": protocol.context_pairs, "history_images": protocol.context_pairs}
    return env, agent


def plan(spec: BenchSpec) -> tuple[list[Combination], Protocol | None, tuple[int, ...]]:
    """Every run the sweep needs (random baselines first), validated before anything runs."""
    protocol = load_protocol(spec.protocol) if spec.protocol else None
    games = spec.games or (protocol.games if protocol else ())
    if not games:
        raise ConfigError("no games: pass --games (the protocol names none)")
    games = tuple(resolve_game(g) for g in games)
    if not spec.models:
        raise ConfigError("no models: pass --models (comma-separated --model values)")
    seeds = spec.seeds if spec.seeds is not None else tuple(range(protocol.runs if protocol else 3))
    combos: list[Combination] = []
    for game in games:
        combos.append(Combination(game, "random", "random", "-", spec.out / game / "random"))
        for model in spec.models:
            for prompt in spec.prompts:
                label = Path(prompt).stem if prompt.endswith(".txt") else prompt
                out = spec.out / game / _slug(model) / _slug(label)
                combos.append(Combination(game, "vlm", model, prompt, out))
    return combos, protocol, seeds


def _is_complete(out: Path, episodes: int) -> bool:
    if not (out / "summary.json").exists() or not (out / "episodes.jsonl").exists():
        return False
    done = {r.get("episode") for r in read_jsonl(out / "episodes.jsonl")}
    return set(range(episodes)) <= done


def _is_local(model: str) -> bool:
    """In-process models are worth loading once per sweep; API clients are made per run (per loop)."""
    return model == "demo" or Path(model).expanduser().is_dir()


def run_bench(
    spec: BenchSpec,
    *,
    on_combination: Callable[[Combination, RunSummary | None], None] | None = None,
) -> dict[str, Any]:
    """Run (or finish) the sweep; returns the results of :func:`atari_vlm.bench.write_results`."""
    combos, protocol, seeds = plan(spec)
    env_options, agent_options = protocol_settings(protocol)
    env = {**env_options, **spec.env, "max_steps": spec.max_steps}
    if spec.executor not in EXECUTORS:
        raise ConfigError(f"executor must be one of {EXECUTORS}, got {spec.executor!r}")
    on_ray = spec.executor == "ray"
    if on_ray and spec.max_cost_usd is not None:
        raise ConfigError(
            "--max-cost is enforced within one process; with --executor ray each worker would spend "
            "it all, so the pair is refused: run the sweep locally, or without a cap"
        )
    pending = [c for c in combos if not _is_complete(c.out, len(seeds))]
    local_models: dict[str, LoadedModel] = {}  # local weights load once; API clients are cheap per run
    with ray_session(spec.ray_address) if on_ray and pending else contextlib.nullcontext():
        try:
            if spec.max_cost_usd is not None:
                _check_priced(spec, pending, local_models)
            _sweep(spec, combos, seeds, protocol, env, agent_options, on_combination, local_models, on_ray)
        finally:
            for model in local_models.values():
                asyncio.run(model.vlm.aclose())
    table = protocol.table if protocol else "dqn_nature"
    return write_results([spec.out], spec.out / "results", table=table)


def _check_priced(spec: BenchSpec, pending: list[Combination], local_models: dict[str, LoadedModel]) -> None:
    """A capped sweep needs a price for every model it will call, known before it spends anything
    (else it would stop at the first unpriced combination with the earlier ones paid for)."""
    for model in dict.fromkeys(c.model for c in pending if c.agent == "vlm"):
        loaded = local_models.get(model) or load_model(model, spec.model_options)
        if _is_local(model):
            local_models[model] = loaded  # loaded once for the sweep anyway
        else:
            asyncio.run(loaded.vlm.aclose())
        if loaded.prices is None:
            raise ConfigError(
                f"--max-cost needs a known price for every model of the sweep, and {model!r} has none "
                "(a model behind --base-url, or one no preset lists); drop the cap or that model"
            )


def _sweep(
    spec: BenchSpec,
    combos: list[Combination],
    seeds: tuple[int, ...],
    protocol: Any,
    env: dict[str, Any],
    agent_options: dict[str, Any],
    on_combination: Callable[[Combination, RunSummary | None], None] | None,
    local_models: dict[str, LoadedModel],
    on_ray: bool,
) -> None:
    """Play every combination not yet complete, in order, until the sweep's budget (if any) is spent."""
    spent = 0.0
    for combo in combos:
        if _is_complete(combo.out, len(seeds)):
            if on_combination is not None:
                on_combination(combo, None)
            continue
        loaded = None
        if combo.agent == "vlm" and _is_local(combo.model) and not on_ray:
            if combo.model not in local_models:
                local_models[combo.model] = load_model(combo.model, spec.model_options)
            loaded = local_models[combo.model]
        settings = PlaySettings(
            game=combo.game,
            out=combo.out,
            model=combo.model,
            agent=combo.agent,
            episodes=len(seeds),
            env_seeds=seeds,
            env=env,
            prompt=combo.prompt if combo.agent == "vlm" else "basic",
            video=spec.video,
            num_envs=spec.num_envs,
            max_tokens=spec.max_tokens,
            temperature=spec.temperature,
            resume=(combo.out / "config.json").exists(),
            model_options=spec.model_options,
            protocol=protocol.to_dict() if protocol else None,
            max_cost_usd=None if spec.max_cost_usd is None else max(0.0, spec.max_cost_usd - spent),
            **(agent_options if combo.agent == "vlm" else {}),
        )
        # On Ray, each run's executor joins the sweep's Ray session; its workers load their own model.
        summary = run_play(settings, loaded=loaded, executor=RayExecutor() if on_ray else None)
        spent += summary.spent_usd or 0.0
        if on_combination is not None:
            on_combination(combo, summary)
        if summary.stopped:
            break  # the budget is spent: the rest of the sweep waits for a resumed bench


__all__ = ["BenchSpec", "Combination", "parse_seeds", "plan", "protocol_settings", "run_bench"]
