"""The results table of a set of run directories: per game x model x prompt, with honest error bars.

Every row says how many episodes it rests on, gives the mean raw return and the human-normalized
mean with stratified bootstrap 95% intervals (episodes are the resampled runs), and, when a random-agent
run played the same episode seeds under the same env settings, that random baseline beside it.

Runs share a row only when their specs agree on every setting that changes play (their
fingerprint, :meth:`atari_vlm.spec.RunSpec.fingerprint`): seeds and episode counts pool, a frame
skip or a temperature never does. Rows that would otherwise look alike say what sets them apart.
Aggregates over games (mean, median, IQM) follow. Published numbers (Atari-GPT) are listed apart and
labelled "published, not measured": they were not produced by these runs.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape

from atari_vlm.bench.scores import (
    DEFAULT_TABLE,
    PUBLISHED,
    TABLES,
    has_reference,
    human_normalized,
    stratified_bootstrap_ci,
)
from atari_vlm.errors import ConfigError
from atari_vlm.rundir import read_episode_records, read_json_file, read_run_spec, write_json_atomic
from atari_vlm.spec import RunSpec, differences, is_finite_number
from atari_vlm.terminal import Column, render_table

NO_VALUE = "-"


@dataclass(frozen=True)
class RunRecord:
    """What the results table needs from one run directory."""

    path: Path
    spec: RunSpec
    model: str  # the model as loaded ("random"/"expert" for a reference agent)
    random_weights: bool
    episodes: tuple[dict[str, Any], ...]
    skipped_records: int = 0  # bad lines of its episodes.jsonl, left out of every figure

    @property
    def game(self) -> str:
        return self.spec.game

    @property
    def agent(self) -> str:
        return self.spec.agent

    @property
    def prompt(self) -> str:
        return NO_VALUE if self.agent != "vlm" else self.spec.prompt.prompt

    @property
    def protocol(self) -> str:
        return self.spec.protocol or NO_VALUE

    @property
    def returns(self) -> list[float]:
        return [float(e["return"]) for e in self.episodes]


def load_run(path: str | Path) -> RunRecord:
    """Read one run directory's config.json and episodes.jsonl.

    Raises:
        ConfigError: not a run directory, or its config.json is unreadable.
    """
    path = Path(path)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ConfigError(f"{path} is not a run directory: it has no config.json")
    config = read_json_file(config_path)
    spec = read_run_spec(config, config_path)
    # Only records that are whole episodes of this run count (typed fields, numbers 0..episodes-1).
    found = read_episode_records(path / "episodes.jsonl", spec.episodes)
    episodes = [e for e in found.records if is_finite_number(e.get("return"))]
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    return RunRecord(
        path=path,
        spec=spec,
        model=spec.agent if spec.agent != "vlm" else str(model.get("spec", spec.model.model)),
        random_weights=bool(model.get("random_weights", False)),
        episodes=tuple(episodes),
        skipped_records=found.skipped,
    )


def collect_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories among ``paths``: each path is a run directory or a folder searched for them.

    Raises:
        ConfigError: a path does not exist, or no run directory was found.
    """
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise ConfigError(f"{p} does not exist")
        if (p / "config.json").is_file():
            found.append(p)
        else:
            found.extend(sorted(c.parent for c in p.rglob("config.json")))
    if not found:
        raise ConfigError("no run directories found (a run directory holds config.json)")
    return list(dict.fromkeys(found))


def _interval(values: Sequence[float], *, reps: int, seed: int, confidence: float) -> dict[str, float]:
    return stratified_bootstrap_ci(
        np.asarray(values, dtype=float), "mean", reps=reps, seed=seed, confidence=confidence
    ).to_dict()


REFERENCE_AGENTS = ("random", "expert")
FEW_SEEDS = 5
"""A row resting on fewer episodes than this says so: its interval says little (seed variance is large)."""


def _reference(group: list[RunRecord], references: list[RunRecord]) -> dict[str, Any] | None:
    """Mean return of a reference agent's episodes (random, expert) that used the same env seeds and
    the same env settings as ``group``'s."""
    wanted = {(e.get("seed"), r.spec.env_fingerprint()) for r in group for e in r.episodes}
    matched = [
        float(e["return"])
        for r in references
        for e in r.episodes
        if (e.get("seed"), r.spec.env_fingerprint()) in wanted
    ]
    if not matched:
        return None
    return {"mean_return": float(np.mean(matched)), "episodes": len(matched)}


def _distinguishing_settings(
    groups: Mapping[tuple[str, str, str, str, str], list[RunRecord]],
) -> dict[tuple[str, str, str, str, str], str]:
    """For each group, the settings that set it apart from the groups with the same game, model,
    prompt and protocol ("frame_skip=8"), or "" when it has no such twin: two rows that would look the
    same say what differs."""
    twins: dict[tuple[str, str, str, str], list[tuple[str, str, str, str, str]]] = defaultdict(list)
    for key in groups:
        twins[key[:4]].append(key)
    out: dict[tuple[str, str, str, str, str], str] = {}
    for keys in twins.values():
        for key in keys:
            mine = groups[key][0].spec
            differing: dict[str, Any] = {}
            for other in keys:
                if other != key:
                    for name, value, _ in differences(mine, groups[other][0].spec, frozenset({"play"})):
                        differing[name] = value
            out[key] = ", ".join(
                f"{name}={_setting_text(value)}" for name, value in sorted(differing.items())
            )
    return out


def _setting_text(value: Any) -> str:
    if isinstance(value, list):
        return "x".join(map(str, value))
    return str(value)


def build_results(
    run_dirs: Iterable[str | Path],
    *,
    table: str = DEFAULT_TABLE,
    reps: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """The results of ``run_dirs`` as plain data (what ``results.json`` holds).

    Raises:
        ConfigError: a path is not a run directory, no run has a finished episode, or a bad option.
    """
    if table not in TABLES:
        raise ConfigError(f"unknown reference table {table!r}; choose one of {sorted(TABLES)}")
    runs = [load_run(p) for p in collect_run_dirs(run_dirs)]
    skipped = [{"path": str(r.path), "reason": "no finished episode"} for r in runs if not r.episodes]
    runs = [r for r in runs if r.episodes]
    if not runs:
        raise ConfigError("none of the run directories has a finished episode (episodes.jsonl is empty)")
    groups: dict[tuple[str, str, str, str, str], list[RunRecord]] = defaultdict(list)
    for r in runs:
        groups[(r.game, r.model, r.prompt, r.protocol, r.spec.fingerprint())].append(r)
    ci = {"reps": reps, "seed": seed, "confidence": confidence}
    rows = []
    normalized: dict[tuple[str, str, str, str], dict[str, list[float]]] = defaultdict(dict)
    settings_of = _distinguishing_settings(groups)
    for (game, model, prompt, protocol, fingerprint), group in sorted(groups.items()):
        returns = [x for r in group for x in r.returns]
        episodes = [e for r in group for e in r.episodes]
        costs = [float(e["cost_usd"]) for e in episodes if is_finite_number(e.get("cost_usd"))]
        decisions = sum(int(e.get("decisions") or 0) for e in episodes)
        row: dict[str, Any] = {
            "game": game,
            "model": model,
            "prompt": prompt,
            "protocol": protocol,
            "fingerprint": fingerprint,
            "settings": settings_of[(game, model, prompt, protocol, fingerprint)],
            "agent": group[0].agent,
            "random_weights": any(r.random_weights for r in group),
            "runs": len(group),
            "run_dirs": [str(r.path) for r in group],
            "episodes": len(returns),
            "mean_return": _interval(returns, **ci),
            "human_normalized": None,
            "random_same_seeds": None,
            "expert_same_seeds": None,
            "decisions": decisions,
            "unparsed": sum(int(e.get("unparsed") or 0) for e in episodes),
            # Reference scores are for whole games: a return cut short by a step cap is not comparable
            # (a stuck episode is: nothing would have happened until the cap).
            "truncated_episodes": sum(
                bool(e.get("truncated")) and e.get("stuck") is not True for e in episodes
            ),
            "stuck_episodes": sum(e.get("stuck") is True for e in episodes),
            "cost_usd": sum(costs) if costs else None,
        }
        if has_reference(game, table):
            hns = [float(human_normalized(game, x, table)) for x in returns]
            row["human_normalized"] = _interval(hns, **ci)
            normalized[(model, prompt, protocol, row["settings"])][game] = hns
        for agent in REFERENCE_AGENTS:
            if group[0].agent != agent:
                references = [r for r in runs if r.agent == agent and r.game == game]
                row[f"{agent}_same_seeds"] = _reference(group, references)
        rows.append(row)
    aggregates = []
    for (model, prompt, protocol, settings), per_game in sorted(normalized.items()):
        key = (model, prompt, protocol, settings)
        mine = [r for r in rows if (r["model"], r["prompt"], r["protocol"], r["settings"]) == key]
        measured = sorted({r["game"] for r in mine})
        aggregates.append(
            {
                "model": model,
                "prompt": prompt,
                "protocol": protocol,
                "settings": settings,
                "games": sorted(per_game),
                "games_without_reference": [g for g in measured if g not in per_game],
                "random_weights": any(r["random_weights"] for r in mine),
                "truncated_episodes": sum(r["truncated_episodes"] for r in mine if r["game"] in per_game),
                **{
                    name: stratified_bootstrap_ci(per_game, name, **ci).to_dict()
                    for name in ("mean", "median", "iqm")
                },
            }
        )
    ref = TABLES[table]
    return {
        "table": {"name": ref.name, "title": ref.title, "source": ref.source},
        "bootstrap": ci,
        "rows": rows,
        "aggregates": aggregates,
        "published": [
            {
                "model": p.model,
                "value": p.value,
                "metric": p.metric,
                "protocol": p.protocol,
                "games": list(p.games),
                "source": p.source,
                "label": p.label,
            }
            for p in PUBLISHED
        ],
        "skipped": skipped,
    }


# --- writing ------------------------------------------------------------------------------------------


def _md(text: Any) -> str:
    """A table cell: run data is untrusted, so no pipes, newlines or raw HTML get through."""
    s = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return s.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _num(x: float | None, digits: int = 1) -> str:
    return NO_VALUE if x is None else f"{x:.{digits}f}"


def _ci_text(interval: dict[str, float] | None, *, percent: bool = False) -> str:
    if interval is None:
        return NO_VALUE
    scale, digits, unit = (100.0, 1, "%") if percent else (1.0, 1, "")
    p, lo, hi = (interval[k] * scale for k in ("point", "low", "high"))
    return f"{p:.{digits}f}{unit} [{lo:.{digits}f}, {hi:.{digits}f}]"


FEW_MARK = " \u2020"
_FEW_NOTE = (
    f"\u2020 Fewer than {FEW_SEEDS} episodes: the interval rests on too few seeds to say much "
    "(published seed variance is large: one model scored 0% on one seed and 5.6% on another)."
)
_STUCK_NOTE = (
    "stuck: episodes ended because the screen had not changed for the run's stuck_decisions decisions "
    "(e.g. Breakout waiting for FIRE); their returns count as they stood."
)


def _reference_text(reference: dict[str, Any] | None) -> str:
    return f"{reference['mean_return']:.1f} (n={reference['episodes']})" if reference else NO_VALUE


def _model_cell(row: dict[str, Any]) -> str:
    """The model, marked when its weights are random, with the settings that set its row apart."""
    text = row["model"] + (" (RANDOM WEIGHTS)" if row["random_weights"] else "")
    return text + (f" [{row['settings']}]" if row.get("settings") else "")


_TRUNCATED_NOTE = (
    "\\* Some episodes were cut short by a step cap: the reference scores are for whole games, so these "
    "human-normalized numbers are not comparable to them."
)


def _per_game(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The per-game table as plain cells (headers, rows): the markdown and the terminal share it."""
    level = f"{results['bootstrap']['confidence'] * 100:g}%"
    rows = results["rows"]
    show_protocol = any(r["protocol"] != NO_VALUE for r in rows)
    show_expert = any(r["expert_same_seeds"] for r in rows)
    show_stuck = any(r["stuck_episodes"] for r in rows)
    head = ["game", "model", "prompt", *(["protocol"] if show_protocol else [])]
    head += ["episodes", f"mean return [{level} CI]", "random, same seeds"]
    head += [*(["expert, same seeds"] if show_expert else []), f"human-normalized [{level} CI]"]
    head += ["unparsed", *(["stuck"] if show_stuck else []), "cost $"]
    table = []
    for r in rows:
        hns = _ci_text(r["human_normalized"], percent=True)
        if r["human_normalized"] and r["truncated_episodes"]:
            hns += " *"
        cells = [r["game"], _model_cell(r), r["prompt"], *([r["protocol"]] if show_protocol else [])]
        cells += [
            f"{r['episodes']}{FEW_MARK if r['episodes'] < FEW_SEEDS else ''}",
            _ci_text(r["mean_return"]),
            _reference_text(r["random_same_seeds"]),
            *([_reference_text(r["expert_same_seeds"])] if show_expert else []),
            hns,
            f"{r['unparsed']}/{r['decisions']}" if r["decisions"] else NO_VALUE,
            *([str(r["stuck_episodes"] or NO_VALUE)] if show_stuck else []),
            _num(r["cost_usd"], 4),
        ]
        table.append([str(c) for c in cells])
    return head, table


def _aggregates(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    show_protocol = any(r["protocol"] != NO_VALUE for r in results["rows"])
    head = ["model", "prompt", *(["protocol"] if show_protocol else []), "games", "mean", "median", "IQM"]
    table = []
    for a in results["aggregates"]:
        games = ", ".join(a["games"])
        if a["games_without_reference"]:
            games += f" (no reference: {', '.join(a['games_without_reference'])})"
        cells = [_model_cell(a), a["prompt"], *([a["protocol"]] if show_protocol else []), games]
        mark = " *" if a["truncated_episodes"] else ""
        cells += [_ci_text(a[k], percent=True) + mark for k in ("mean", "median", "iqm")]
        table.append(cells)
    return head, table


def _published(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = ["model", "value", "metric", "protocol", "source"]
    rows = [
        [p["model"], f"{p['value'] * 100:.1f}%", p["metric"], p["protocol"], p["source"]]
        for p in results["published"]
    ]
    return head, rows


def _notes(results: dict[str, Any]) -> list[str]:
    """The footnotes the per-game table's marks refer to."""
    rows = results["rows"]
    notes = []
    if any(r["truncated_episodes"] and r["human_normalized"] for r in rows):
        notes.append(_TRUNCATED_NOTE)
    if any(r["episodes"] < FEW_SEEDS for r in rows):
        notes.append(_FEW_NOTE)
    if any(r["stuck_episodes"] for r in rows):
        notes.append(_STUCK_NOTE)
    return notes


def _intro(results: dict[str, Any]) -> list[str]:
    table, ci = results["table"], results["bootstrap"]
    level = f"{ci['confidence'] * 100:g}%"
    return [
        f"Human-normalized with the {table['title']} reference scores ({table['source']}): "
        "0% plays like the random policy, 100% like the human tester.",
        f"Intervals: {level} stratified bootstrap ({ci['reps']} resamples, seed {ci['seed']}); "
        "episodes are the resampled runs.",
    ]


_PUBLISHED_NOTE = (
    "Numbers reported in papers, for orientation only: they were NOT produced by the runs above, and "
    "come from a different protocol, games, human scores and model versions."
)


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(_md(c) for c in cells) + " |" for cells in rows]


def _markdown(results: dict[str, Any]) -> str:
    lines = ["# Results", "", *_intro(results), "", "## Per game", ""]
    lines += _md_table(*_per_game(results))
    notes = _notes(results)
    for note in notes:
        lines += ["", note]
    lines += ["", "## Aggregates over games (human-normalized)", ""]
    if results["aggregates"]:
        lines += _md_table(*_aggregates(results))
        if _TRUNCATED_NOTE in notes:
            lines += ["", _TRUNCATED_NOTE]
    else:
        lines.append(f"No measured game has a reference score in the {results['table']['name']} table.")
    lines += ["", "## Published, not measured", "", _PUBLISHED_NOTE, ""]
    lines += _md_table(*_published(results))
    if results["skipped"]:
        lines += [
            "",
            "Skipped: " + "; ".join(_md(f"{s['path']} ({s['reason']})") for s in results["skipped"]),
        ]
    return "\n".join(lines) + "\n"


def markdown(results: dict[str, Any]) -> str:
    """The results as Markdown (what ``results.md`` holds, and ``--format md`` prints)."""
    return _markdown(results)


# Per-game columns by how much they are needed in a narrow terminal (0: always shown).
_TERMINAL_PRIORITY = {"game": 0, "model": 0, "prompt": 1, "episodes": 3, "unparsed": 7, "stuck": 8}


def _terminal_column(header: str, names: int = 16) -> Column:
    if header.startswith("mean return"):
        return Column(header, 0, "right")
    if header.startswith("human-normalized"):
        return Column(header, 2, "right")
    if header.startswith("random"):
        return Column(header, 4, "right")
    if header.startswith("expert"):
        return Column(header, 5, "right")
    if header == "cost $":
        return Column(header, 6, "right")
    if header in ("model", "games"):  # wraps at the spaces before its settings, never inside a name
        return Column(header, 0, wrap=True, min_width=names)
    return Column(header, _TERMINAL_PRIORITY.get(header, 9))


def render_results(console: Console, results: dict[str, Any], *, wide: bool = False) -> None:
    """The results tables for a terminal: the columns that fit (all with ``wide``), then the notes."""
    for line in _intro(results):
        console.print(escape(line))
    head, rows = _per_game(results)
    names = max(
        (len(w) for r in [*results["rows"], *results["aggregates"]] for w in _model_cell(r).split()),
        default=8,
    )
    columns = [_terminal_column(h, names) for h in head]
    hidden = render_table(console, columns, rows, title="Per game", wide=wide)
    if hidden:
        console.print(f"[dim]not shown at this width: {'; '.join(hidden)} (--wide shows all)[/dim]")
    for note in _notes(results):
        console.print(escape(note.replace("\\*", "*")))
    if results["aggregates"]:
        head, rows = _aggregates(results)
        columns = [
            _terminal_column(h, names) if h in ("model", "games") else Column(h, 1, "right") for h in head
        ]
        columns[1] = Column("prompt")
        hidden = render_table(
            console, columns, rows, title="Aggregates over games (human-normalized)", wide=wide
        )
        if hidden:
            console.print(f"[dim]not shown at this width: {'; '.join(hidden)} (--wide shows all)[/dim]")
    head, rows = _published(results)
    columns = [Column("model"), Column("value", 0, "right"), Column("metric", 2), Column("protocol", 1)]
    columns.append(Column("source", 3, wrap=True, min_width=20))
    render_table(console, columns, rows, title="Published, not measured (NOT from these runs)", wide=wide)
    for s in results["skipped"]:
        console.print(f"skipped: {escape(s['path'])} ({escape(s['reason'])})")


_CSV_COLUMNS = (
    *("game", "model", "prompt", "protocol", "fingerprint", "settings", "agent", "random_weights", "runs"),
    "episodes",
    *("mean_return", "return_ci_low", "return_ci_high", "hns_mean", "hns_ci_low", "hns_ci_high"),
    *("random_same_seeds_mean_return", "random_same_seeds_episodes"),
    *("expert_same_seeds_mean_return", "expert_same_seeds_episodes"),
    *("decisions", "unparsed", "truncated_episodes", "stuck_episodes", "cost_usd"),
)


def _csv_row(r: dict[str, Any]) -> dict[str, Any]:
    ret, hns, base = r["mean_return"], r["human_normalized"] or {}, r["random_same_seeds"] or {}
    expert = r["expert_same_seeds"] or {}
    return {
        **{
            k: r[k]
            for k in (
                "game",
                "model",
                "prompt",
                "protocol",
                "fingerprint",
                "settings",
                "agent",
                "random_weights",
            )
        },
        "runs": r["runs"],
        "episodes": r["episodes"],
        "mean_return": ret["point"],
        "return_ci_low": ret["low"],
        "return_ci_high": ret["high"],
        "hns_mean": hns.get("point"),
        "hns_ci_low": hns.get("low"),
        "hns_ci_high": hns.get("high"),
        "random_same_seeds_mean_return": base.get("mean_return"),
        "random_same_seeds_episodes": base.get("episodes"),
        "expert_same_seeds_mean_return": expert.get("mean_return"),
        "expert_same_seeds_episodes": expert.get("episodes"),
        "decisions": r["decisions"],
        "unparsed": r["unparsed"],
        "truncated_episodes": r["truncated_episodes"],
        "stuck_episodes": r["stuck_episodes"],
        "cost_usd": r["cost_usd"],
    }


def _csv(results: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=_CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in results["rows"]:
        writer.writerow(_csv_row(r))
    return out.getvalue()


def write_results(
    run_dirs: Iterable[str | Path],
    out_dir: str | Path,
    *,
    table: str = DEFAULT_TABLE,
    reps: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Build the results of ``run_dirs`` and write ``results.md``, ``results.csv`` and ``results.json``
    into ``out_dir``; returns the results with a ``files`` entry naming what was written.

    Example:
        >>> write_results(["runs/pong_gpt", "runs/pong_random"], "results/")  # doctest: +SKIP

    Raises:
        ConfigError: as :func:`build_results`, or ``out_dir`` cannot be written.
    """
    results = build_results(run_dirs, table=table, reps=reps, seed=seed, confidence=confidence)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        files = {"markdown": out / "results.md", "csv": out / "results.csv", "json": out / "results.json"}
        files["markdown"].write_text(_markdown(results), encoding="utf-8")
        files["csv"].write_text(_csv(results), encoding="utf-8")
        results["files"] = {k: str(v) for k, v in files.items()}
        write_json_atomic(files["json"], results)
    except OSError as exc:
        raise ConfigError(f"cannot write results to {out}: {exc.strerror or exc}") from exc
    return results
