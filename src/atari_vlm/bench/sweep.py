"""A benchmark sweep: every game x model x prompt on the same seeds under one protocol, with the
random agent on those seeds too, each combination in its own run directory, then the results tables
and the bench's ``report.html`` (:mod:`atari_vlm.report.bench`, with a viewer for every run).

Every combination is a :class:`~atari_vlm.spec.RunSpec` built from the same settings, so that the
only differences between two runs of a sweep are its factors. Resumable: a combination whose run is
complete is skipped, an interrupted one is resumed (finished episodes kept, the interrupted one
replayed), so rerunning the same command finishes the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atari_vlm.bench.protocols import Protocol, load_protocol, with_protocol
from atari_vlm.bench.results import build_results, collect_run_dirs, load_run, write_results
from atari_vlm.bench.scores import DEFAULT_TABLE
from atari_vlm.errors import ConfigError
from atari_vlm.executors import RayExecutor, ray_session
from atari_vlm.experts import EXPERT_GAMES
from atari_vlm.models.registry import LoadedModel, load_model
from atari_vlm.rollout import EpisodeResult
from atari_vlm.rundir import read_episode_records, read_json_file, resume_refusal
from atari_vlm.runner import (
    MeasuredDecision,
    RunSummary,
    decisions_bound,
    measure_decision,
    project,
    run_play,
)
from atari_vlm.spec import BENCH_STUCK_DECISIONS, OBSERVATIONS, RunSpec, SweepSpec, parse_seeds
from atari_vlm.workers import action_names, model_spec_for, prompt_builder

DEFAULT_SEEDS = 5
"""Seeds per combination when neither --seeds nor the protocol asks for more: published seed variance
is large (a model can score 0% on one seed and 5.6% on another), so fewer make a CI that says little."""


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
    agent: str  # "vlm", or a reference agent: "random", "expert"
    model: str
    prompt: str
    out: Path
    spec: RunSpec

    @property
    def label(self) -> str:
        if self.agent != "vlm":
            return f"{self.game} x {self.agent}"
        observed = "" if self.spec.observation.label == "screen+text" else f" ({self.spec.observation.label})"
        return f"{self.game} x {self.model} x {self.prompt}{observed}"


def plan(bench: BenchSpec) -> tuple[list[Combination], Protocol | None, tuple[int, ...]]:
    """Every run the sweep needs (reference agents first: random, then the RAM expert where one
    exists), each spec validated before anything runs."""
    defaults = {"stuck_decisions": BENCH_STUCK_DECISIONS}
    settings = with_protocol({**defaults, **bench.settings}, bench.given)
    protocol = load_protocol(settings["protocol"]) if settings.get("protocol") else None
    sweep = bench.sweep
    games = sweep.games or (protocol.games if protocol else ())
    if not games:
        raise ConfigError("no games: pass --games (the protocol names none)")
    if not sweep.models:
        raise ConfigError("no models: pass --models (comma-separated --model values)")
    observations = _observation_factor(sweep, protocol)
    runs = max(DEFAULT_SEEDS, protocol.runs if protocol else 0)
    seeds = sweep.seeds if sweep.seeds is not None else tuple(range(runs))
    common = {**settings, "env_seeds": seeds, "episodes": len(seeds)}
    combos: list[Combination] = []
    for game in games:
        spec = RunSpec.build(game=game, **{**common, "agent": "random"})
        combos.append(Combination(spec.game, "random", "random", "-", bench.out / spec.game / "random", spec))
        if spec.game in EXPERT_GAMES:
            spec = spec.replace(agent="expert")
            combos.append(
                Combination(spec.game, "expert", "expert", "-", bench.out / spec.game / "expert", spec)
            )
        for model in sweep.models:
            for prompt in sweep.prompts:
                for observed in observations:
                    shown = OBSERVATIONS[observed] if observed else {}
                    spec = RunSpec.build(
                        game=game, **{**common, **shown, "agent": "vlm", "model": model, "prompt": prompt}
                    )
                    label = Path(prompt).stem if prompt.endswith(".txt") else prompt
                    out = bench.out / spec.game / _slug(model) / _slug(label)
                    if observed:
                        out = out / f"observe-{_slug(observed)}"
                    combos.append(Combination(spec.game, "vlm", model, prompt, out, spec))
    return combos, protocol, seeds


def _observation_factor(sweep: SweepSpec, protocol: Protocol | None) -> tuple[str, ...]:
    """The observation kinds the sweep compares ("": the settings' own, when it compares none)."""
    if not sweep.observations:
        return ("",)
    fixed = sorted({"screen", "state_text"} & set(protocol.settings)) if protocol else []
    if fixed:
        raise ConfigError(
            f"protocol {protocol.name!r} fixes what the model observes ({', '.join(fixed)}), "  # type: ignore[union-attr]
            "so --observations cannot sweep it; drop one of them"
        )
    return sweep.observations


def check_before_playing(
    combos: list[Combination], pending: list[Combination], local_models: dict[str, LoadedModel]
) -> None:
    """Everything a sweep can refuse, found before its first step, so that a bad model, key, prompt or
    a changed setting writes nothing: every run already on disk (finished ones too: a finished run under
    other settings is not this sweep's result) may go on under its new spec, and, for the ``pending``
    ones, each prompt renders for each game, each model loads (an API client checks its key; a local
    model stays loaded for the sweep) and, with a spending cap, has a known price.

    Raises:
        ConfigError: every problem found, in one message.
    """
    problems: list[str] = []
    names: dict[tuple[str, bool], list[str]] = {}
    for combo in combos:
        spec = combo.spec
        key = (spec.game, spec.env.full_action_space)
        try:
            if combo.agent == "vlm" and combo in pending:
                if key not in names:
                    names[key] = action_names(spec)
                prompt_builder(spec, names[key])
            refusal = _resume_refusal(combo)
            if refusal:
                problems.append(f"{combo.label}: cannot go on with the run in {combo.out}: {refusal}")
        except ConfigError as exc:
            problems.append(f"{combo.label}: {exc}")
    for combo in {c.model: c for c in pending if c.agent == "vlm"}.values():
        try:
            loaded = local_models.get(combo.model) or load_model(model_spec_for(combo.spec))
        except ConfigError as exc:
            problems.append(f"model {combo.model!r}: {exc}")
            continue
        if _is_local(combo.model):
            local_models[combo.model] = loaded
        else:
            asyncio.run(loaded.vlm.aclose())
        if combo.spec.max_cost_usd is not None and loaded.prices is None:
            # Else the sweep would stop at this model with the earlier combinations paid for.
            problems.append(
                f"--max-cost needs a known price for every model of the sweep, and {combo.model!r} has none "
                "(a model behind --base-url, or one no preset lists): drop the cap or that model"
            )
    if problems:
        raise ConfigError("the sweep was not started: " + "; ".join(dict.fromkeys(problems)))


def _resume_refusal(combo: Combination) -> str | None:
    config_path = combo.out / "config.json"
    if not config_path.is_file():
        return None
    try:
        old = read_json_file(config_path)
    except ConfigError as exc:
        return f"its config.json is unreadable ({exc})"
    new = {"kind": "play", "model": None}
    if isinstance(old, dict) and isinstance(old.get("model"), dict):
        new["model"] = old["model"]  # what 'auto' resolves to is checked when the model loads
    return resume_refusal(old, new, combo.spec, config_path)


def _is_complete(out: Path, episodes: int) -> bool:
    if not (out / "summary.json").exists() or not (out / "episodes.jsonl").exists():
        return False
    done = {r["episode"] for r in read_episode_records(out / "episodes.jsonl", episodes).records}
    return set(range(episodes)) <= done


def _is_local(model: str) -> bool:
    """In-process models are worth loading once per sweep; API clients are made per run (per loop)."""
    return model == "demo" or Path(model).expanduser().is_dir()


@dataclass
class SweepCallbacks:
    """What a sweep tells its caller as it goes (all optional): ``on_plan`` the combinations still to
    play (before the first step), ``on_step`` each decision, ``on_episode`` each finished episode,
    ``on_combination`` each combination done (its summary; None when it was done already)."""

    on_plan: Callable[[list[Combination]], None] | None = None
    on_step: Callable[[int], None] | None = None
    on_episode: Callable[[Combination, EpisodeResult], None] | None = None
    on_combination: Callable[[Combination, RunSummary | None], None] | None = None


def run_bench(
    bench: BenchSpec,
    *,
    on_combination: Callable[[Combination, RunSummary | None], None] | None = None,
    callbacks: SweepCallbacks | None = None,
) -> dict[str, Any]:
    """Run (or finish) the sweep; returns the results of :func:`atari_vlm.bench.write_results`, with
    ``report``: the path of the bench's report.html (None without the report extra)."""
    callbacks = callbacks or SweepCallbacks()
    if on_combination is not None:
        callbacks = dataclasses.replace(callbacks, on_combination=on_combination)
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
    try:
        check_before_playing(combos, pending, local_models)
        if callbacks.on_plan is not None:
            callbacks.on_plan(pending)
        with ray_session(first.ray_address) if on_ray and pending else contextlib.nullcontext():
            _sweep(combos, seeds, callbacks, local_models, on_ray)
    finally:
        for model in local_models.values():
            asyncio.run(model.vlm.aclose())
    table = protocol.table if protocol else DEFAULT_TABLE
    results = write_results([bench.out], bench.out / "results", table=table)
    results["report"] = _report_if_possible(bench.out, results)
    return results


def results_table(bench_dir: str | Path) -> str:
    """The reference table of a bench folder's results: its runs' protocol's, else the default (as
    :func:`run_bench` chooses it).

    Raises:
        ConfigError: no run directory in ``bench_dir``, or runs under different protocols.
    """
    if not any(Path(bench_dir).rglob("config.json")):
        raise ConfigError(
            f"{bench_dir} is neither a run directory (it has no config.json) nor a bench folder (it holds "
            "no run directories): pass the --out of `atari-vlm play`, `train` or `bench`"
        )
    protocols = {load_run(p).spec.protocol for p in collect_run_dirs([bench_dir])}
    protocols.discard(None)
    if len(protocols) > 1:
        raise ConfigError(
            f"{bench_dir} holds runs of several protocols ({', '.join(sorted(protocols))}): "
            "report each protocol's folder on its own"
        )
    return load_protocol(protocols.pop()).table if protocols else DEFAULT_TABLE


def write_bench_report(bench_dir: str | Path) -> Path:
    """``report.html`` at the root of a bench folder (and each run's own report where missing), from
    the results of its runs (``atari-vlm report <bench dir>``).

    Raises:
        ConfigError: no run directory with a finished episode in ``bench_dir``.
        DependencyNotInstalled: matplotlib is missing (``pip install "atari-vlm[report]"``).
    """
    from atari_vlm.report.bench import write_bench_report as write

    return write(bench_dir, build_results([bench_dir], table=results_table(bench_dir)))


def _report_if_possible(bench_dir: Path, results: dict[str, Any]) -> str | None:
    """The bench report at the end of a sweep, when the report extra is installed (None when not)."""
    from atari_vlm.errors import DependencyNotInstalled
    from atari_vlm.report.bench import write_bench_report as write

    try:
        return str(write(bench_dir, results))
    except DependencyNotInstalled:
        return None


def _sweep(
    combos: list[Combination],
    seeds: tuple[int, ...],
    callbacks: SweepCallbacks,
    local_models: dict[str, LoadedModel],
    on_ray: bool,
) -> None:
    """Play every combination not yet complete, in order, until the sweep's budget (if any) is spent."""
    spent = 0.0
    for combo in combos:
        if _is_complete(combo.out, len(seeds)):
            if callbacks.on_combination is not None:
                callbacks.on_combination(combo, None)
            continue
        loaded = None
        if combo.agent == "vlm" and _is_local(combo.model) and not on_ray:
            if combo.model not in local_models:
                local_models[combo.model] = load_model(model_spec_for(combo.spec))
            loaded = local_models[combo.model]
        spec = combo.spec
        if spec.max_cost_usd is not None:
            spec = spec.replace(max_cost_usd=max(0.0, spec.max_cost_usd - spent))
        on_episode = callbacks.on_episode
        # On Ray, each run's executor joins the sweep's Ray session; its workers load their own model.
        summary = run_play(
            spec,
            combo.out,
            resume=(combo.out / "config.json").exists(),
            loaded=loaded,
            executor=RayExecutor() if on_ray else None,
            on_step=callbacks.on_step,
            on_episode=None if on_episode is None else functools.partial(on_episode, combo),
        )
        spent += summary.spent_usd or 0.0
        if callbacks.on_combination is not None:
            callbacks.on_combination(combo, summary)
        if summary.stopped:
            break  # the budget is spent: the rest of the sweep waits for a resumed bench


def estimate_bench(bench: BenchSpec) -> dict[str, Any]:
    """``bench --dry-run``: every combination still to play, projected (tokens, dollars, model time)
    from one real decision per model, prompt and observation setting (a prompt changes what a model
    answers, so it is measured apart; games share it); writes nothing.

    Reference agents call no model: their decisions count, their tokens and dollars are zero. The
    totals add the combinations up; the dollars are None ("unknown") when a model has no price.

    Raises:
        ConfigError: whatever would refuse the sweep itself (:func:`check_before_playing`).
    """
    combos, _protocol, seeds = plan(bench)
    pending = [c for c in combos if not _is_complete(c.out, len(seeds))]
    local_models: dict[str, LoadedModel] = {}
    measured: dict[tuple[str, str, str], MeasuredDecision] = {}
    rows = []
    try:
        check_before_playing(combos, pending, local_models)
        for combo in pending:
            if combo.agent != "vlm":
                per_episode, bound = decisions_bound(combo.spec)
                decisions = per_episode * combo.spec.episodes
                rows.append(
                    {
                        "label": combo.label,
                        "agent": combo.agent,
                        "decisions": decisions,
                        "decisions_bound": bound,
                        "model_decisions": 0,
                        "projected_input_tokens": 0,
                        "projected_output_tokens": 0,
                        "estimated_cost_usd": 0.0,
                        "projected_model_time_s": 0.0,
                    }
                )
                continue
            key = (combo.model, combo.prompt, combo.spec.observation.label)
            if key not in measured:
                measured[key] = measure_decision(combo.spec, loaded=local_models.get(combo.model))
            projection = project(combo.spec, measured[key])
            rows.append(
                {
                    "label": combo.label,
                    "agent": "vlm",
                    **projection,
                    "model_decisions": projection["decisions"],
                }
            )
    finally:
        for model in local_models.values():
            asyncio.run(model.vlm.aclose())
    costs = [r["estimated_cost_usd"] for r in rows]
    totals = {
        key: sum(r[key] for r in rows)
        for key in ("decisions", "model_decisions", "projected_input_tokens", "projected_output_tokens")
    }
    totals["projected_model_time_s"] = round(sum(r["projected_model_time_s"] for r in rows), 1)
    totals["estimated_cost_usd"] = None if None in costs else round(sum(costs), 6)
    totals["priced_cost_usd"] = round(sum(c for c in costs if c is not None), 6)
    return {
        "combinations": rows,
        "done_already": len(combos) - len(pending),
        "measured_decisions": len(measured),
        "totals": totals,
    }


__all__ = [
    "BenchSpec",
    "Combination",
    "SweepCallbacks",
    "estimate_bench",
    "parse_seeds",
    "plan",
    "results_table",
    "run_bench",
    "write_bench_report",
]
