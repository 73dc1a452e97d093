"""A benchmark sweep: every game x model x prompt on the same seeds under one protocol, with the
random agent on those seeds too, each combination in its own run directory, then the results tables.

Every combination is a :class:`~atari_vlm.spec.RunSpec` built from the same settings, so that the
only differences between two runs of a sweep are its factors. Resumable: a combination whose run is
complete is skipped, an interrupted one is resumed (finished episodes kept, the interrupted one
replayed), so rerunning the same command finishes the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atari_vlm.bench.protocols import Protocol, load_protocol, with_protocol
from atari_vlm.bench.results import write_results
from atari_vlm.errors import ConfigError
from atari_vlm.executors import RayExecutor, ray_session
from atari_vlm.models.registry import LoadedModel, load_model
from atari_vlm.rundir import read_jsonl
from atari_vlm.runner import RunSummary, run_play
from atari_vlm.spec import RunSpec, SweepSpec, parse_seeds
from atari_vlm.workers import model_spec_for

DEFAULT_SEEDS = 3
"""Seeds per combination when neither --seeds nor the protocol says."""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"


@dataclass(frozen=True)
class BenchSpec:
    """What to sweep: the factors, and the run settings every combination shares (flat spec names).

    ``given`` names the settings the user typed (the rest are defaults), so that a protocol can
    refuse a setting it fixes otherwise.
    """

    out: Path
    sweep: SweepSpec
    settings: Mapping[str, Any] = field(default_factory=dict)
    given: frozenset[str] = frozenset()


@dataclass
class Combination:
    game: str
    agent: str
    model: str
    prompt: str
    out: Path
    spec: RunSpec


def plan(bench: BenchSpec) -> tuple[list[Combination], Protocol | None, tuple[int, ...]]:
    """Every run the sweep needs (reference agents first), each spec validated before anything runs."""
    settings = with_protocol(bench.settings, bench.given)
    protocol = load_protocol(settings["protocol"]) if settings.get("protocol") else None
    sweep = bench.sweep
    games = sweep.games or (protocol.games if protocol else ())
    if not games:
        raise ConfigError("no games: pass --games (the protocol names none)")
    if not sweep.models:
        raise ConfigError("no models: pass --models (comma-separated --model values)")
    seeds = (
        sweep.seeds if sweep.seeds is not None else tuple(range(protocol.runs if protocol else DEFAULT_SEEDS))
    )
    common = {**settings, "env_seeds": seeds, "episodes": len(seeds)}
    combos: list[Combination] = []
    for game in games:
        spec = RunSpec.build(game=game, **{**common, "agent": "random"})
        combos.append(Combination(spec.game, "random", "random", "-", bench.out / spec.game / "random", spec))
        for model in sweep.models:
            for prompt in sweep.prompts:
                spec = RunSpec.build(
                    game=game, **{**common, "agent": "vlm", "model": model, "prompt": prompt}
                )
                label = Path(prompt).stem if prompt.endswith(".txt") else prompt
                out = bench.out / spec.game / _slug(model) / _slug(label)
                combos.append(Combination(spec.game, "vlm", model, prompt, out, spec))
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
    bench: BenchSpec,
    *,
    on_combination: Callable[[Combination, RunSummary | None], None] | None = None,
) -> dict[str, Any]:
    """Run (or finish) the sweep; returns the results of :func:`atari_vlm.bench.write_results`."""
    combos, protocol, seeds = plan(bench)
    first = combos[0].spec
    on_ray = first.executor == "ray"
    if on_ray and first.max_cost_usd is not None:
        raise ConfigError(
            "--max-cost is enforced within one process; with --executor ray each worker would spend "
            "it all, so the pair is refused: run the sweep locally, or without a cap"
        )
    pending = [c for c in combos if not _is_complete(c.out, len(seeds))]
    local_models: dict[str, LoadedModel] = {}  # local weights load once; API clients are cheap per run
    with ray_session(first.ray_address) if on_ray and pending else contextlib.nullcontext():
        try:
            if first.max_cost_usd is not None:
                _check_priced(pending, local_models)
            _sweep(combos, seeds, on_combination, local_models, on_ray)
        finally:
            for model in local_models.values():
                asyncio.run(model.vlm.aclose())
    table = protocol.table if protocol else "dqn_nature"
    return write_results([bench.out], bench.out / "results", table=table)


def _check_priced(pending: list[Combination], local_models: dict[str, LoadedModel]) -> None:
    """A capped sweep needs a price for every model it will call, known before it spends anything
    (else it would stop at the first unpriced combination with the earlier ones paid for)."""
    for combo in {c.model: c for c in pending if c.agent == "vlm"}.values():
        loaded = local_models.get(combo.model) or load_model(model_spec_for(combo.spec))
        if _is_local(combo.model):
            local_models[combo.model] = loaded  # loaded once for the sweep anyway
        else:
            asyncio.run(loaded.vlm.aclose())
        if loaded.prices is None:
            raise ConfigError(
                f"--max-cost needs a known price for every model of the sweep, and {combo.model!r} has none "
                "(a model behind --base-url, or one no preset lists); drop the cap or that model"
            )


def _sweep(
    combos: list[Combination],
    seeds: tuple[int, ...],
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
                local_models[combo.model] = load_model(model_spec_for(combo.spec))
            loaded = local_models[combo.model]
        spec = combo.spec
        if spec.max_cost_usd is not None:
            spec = spec.replace(max_cost_usd=max(0.0, spec.max_cost_usd - spent))
        # On Ray, each run's executor joins the sweep's Ray session; its workers load their own model.
        summary = run_play(
            spec,
            combo.out,
            resume=(combo.out / "config.json").exists(),
            loaded=loaded,
            executor=RayExecutor() if on_ray else None,
        )
        spent += summary.spent_usd or 0.0
        if on_combination is not None:
            on_combination(combo, summary)
        if summary.stopped:
            break  # the budget is spent: the rest of the sweep waits for a resumed bench


__all__ = ["BenchSpec", "Combination", "parse_seeds", "plan", "run_bench"]
