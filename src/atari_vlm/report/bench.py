"""A bench's ``report.html``: its results table as a page, the plots that compare models, what each
combination cost, and a link to each run's own viewer.

Every number comes from :func:`atari_vlm.bench.results.build_results` (means, human-normalized scores,
their bootstrap intervals, the random and expert agents on the same seeds), which the caller passes in
(:func:`atari_vlm.bench.sweep.write_bench_report` builds them; this module imports nothing of
``bench``); this page only derives the cost of an episode and of a point of return above the random
agent from them, and says how. The page
is static (no script): run data is escaped, links point only at report pages inside the bench folder.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from atari_vlm.errors import require
from atari_vlm.report.html import _CSS, _e, _img, write_report
from atari_vlm.rundir import write_text_atomic

__all__ = ["costs", "render_bench_report", "write_bench_report"]


def _ci(interval: dict[str, float] | None, *, percent: bool = False) -> str:
    if not interval:
        return "-"
    scale, unit = (100.0, "%") if percent else (1.0, "")
    p, lo, hi = (interval[k] * scale for k in ("point", "low", "high"))
    return f"{p:,.1f}{unit} [{lo:,.1f}, {hi:,.1f}]"


def _label(row: dict[str, Any]) -> str:
    reference = row.get("agent") in ("random", "expert") or row.get("prompt") == "-"
    text = row["model"] if reference else f"{row['model']} x {row['prompt']}"
    if row.get("settings"):
        text += f"\n[{row['settings']}]"  # a line of its own, so that the plot keeps its width
    return text + ("\n(RANDOM WEIGHTS)" if row.get("random_weights") else "")


def costs(row: dict[str, Any]) -> tuple[float | None, float | None]:
    """(cost per episode, cost per point of return above the random agent on the same seeds): the
    second only where the row's mean return beats that random mean (else a point costs no finite sum)."""
    cost, episodes = row.get("cost_usd"), row.get("episodes") or 0
    if cost is None or not episodes:
        return None, None
    per_episode = cost / episodes
    random = row.get("random_same_seeds")
    gain = row["mean_return"]["point"] - random["mean_return"] if random else None
    return per_episode, (per_episode / gain if gain is not None and gain > 0 else None)


def _links(bench_dir: Path, row: dict[str, Any]) -> str:
    """Links to the viewer of each run of a row (only run directories inside the bench folder)."""
    root = bench_dir.resolve()
    out = []
    for run in row.get("run_dirs", []):
        path = Path(run).resolve()
        if path.is_relative_to(root) and (path / "report.html").is_file():
            href = Path(os.path.relpath(path / "report.html", root)).as_posix()
            out.append(f"<a href='{_e(href)}'>viewer</a>")
    return " ".join(out) or "-"


def _write_run_reports(results: dict[str, Any], bench_dir: Path) -> None:
    """Each run's own report, where it is missing or older than the run's files."""
    root = bench_dir.resolve()
    for row in results["rows"]:
        for run in row["run_dirs"]:
            path = Path(run)
            if not path.resolve().is_relative_to(root):
                continue
            page = path / "report.html"
            newest = max(
                (p.stat().st_mtime for p in (path / "steps.jsonl", path / "episodes.jsonl") if p.is_file()),
                default=0.0,
            )
            if not page.is_file() or page.stat().st_mtime < newest:
                write_report(path)


def _table(name: str, head: str, body: list[str]) -> str:
    rows = "".join(body)
    return f"<table class='grid' id='{name}'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _results_table(bench_dir: Path, results: dict[str, Any]) -> str:
    rows = results["rows"]
    level = f"{results['bootstrap']['confidence'] * 100:g}%"
    head = [
        "game",
        "model",
        "prompt",
        "settings",
        "episodes",
        f"mean return [{level} CI]",
        "random, same seeds",
        "expert, same seeds",
        f"human-normalized [{level} CI]",
        "unparsed",
        "stuck",
        "cost $",
        "$ / episode",
        "$ / point above random",
        "runs",
    ]
    body = []
    for r in rows:
        per_episode, per_point = costs(r)
        hns = _ci(r["human_normalized"], percent=True)
        if r["human_normalized"] and r["truncated_episodes"]:
            hns += " *"
        ref = {k: r[f"{k}_same_seeds"] for k in ("random", "expert")}
        cells = [
            r["game"],
            r["model"] + (" (RANDOM WEIGHTS)" if r["random_weights"] else ""),
            r["prompt"],
            r["settings"] or "-",
            r["episodes"],
            _ci(r["mean_return"]),
            *(f"{v['mean_return']:,.1f} (n={v['episodes']})" if v else "-" for v in ref.values()),
            hns,
            f"{r['unparsed']}/{r['decisions']}" if r["decisions"] else "-",
            r["stuck_episodes"] or "-",
            "-" if r["cost_usd"] is None else f"{r['cost_usd']:,.4f}",
            "-" if per_episode is None else f"{per_episode:,.5f}",
            "-" if per_point is None else f"{per_point:,.5f}",
        ]
        tds = "".join(f"<td>{_e(c)}</td>" for c in cells)
        body.append(f"<tr>{tds}<td>{_links(bench_dir, r)}</td></tr>")
    ths = "".join(f"<th>{_e(h)}</th>" for h in head)
    return _table("results", ths, body)


def _aggregates_table(results: dict[str, Any]) -> str:
    if not results["aggregates"]:
        return f"<p>No measured game has a reference score in the {_e(results['table']['name'])} table.</p>"
    head = "".join(f"<th>{h}</th>" for h in ("model", "prompt", "settings", "games", "mean", "median", "IQM"))
    body = []
    for a in results["aggregates"]:
        games = ", ".join(a["games"])
        if a["games_without_reference"]:
            games += f" (no reference: {', '.join(a['games_without_reference'])})"
        mark = " *" if a["truncated_episodes"] else ""
        cells = [
            a["model"] + (" (RANDOM WEIGHTS)" if a["random_weights"] else ""),
            a["prompt"],
            a["settings"] or "-",
            games,
            *(_ci(a[k], percent=True) + mark for k in ("mean", "median", "iqm")),
        ]
        body.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    return _table("aggregates", head, body)


def _plots(results: dict[str, Any]) -> list[str]:
    from atari_vlm.report import plots

    level = f"{results['bootstrap']['confidence'] * 100:g}%"
    out = []
    aggregates = results["aggregates"]
    if aggregates:
        out.append(
            _img(
                plots.interval_plot(
                    f"Human-normalized score, mean over games ({level} CI)",
                    "human-normalized score (%)",
                    [_label(a) for a in aggregates],
                    [tuple(a["mean"][k] * 100 for k in ("point", "low", "high")) for a in aggregates],
                    references=[("random", 0.0, "--"), ("human", 100.0, ":")],
                ),
                "human-normalized score per model and prompt",
            )
        )
    by_game: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results["rows"]:
        by_game[r["game"]].append(r)
    for game, rows in sorted(by_game.items()):
        models = [r for r in rows if r["agent"] not in ("random", "expert")]
        if not models:
            continue
        references = []
        for agent, style in (("random", "--"), ("expert", ":")):
            measured = [r for r in rows if r["agent"] == agent]
            if measured:
                references.append((f"{agent} (same seeds)", measured[0]["mean_return"]["point"], style))
        out.append(
            _img(
                plots.interval_plot(
                    f"{game}: mean return ({level} CI)",
                    "return per episode",
                    [_label(r) for r in models],
                    [tuple(r["mean_return"][k] for k in ("point", "low", "high")) for r in models],
                    references=references,
                ),
                f"{game} returns",
            )
        )
    return out


def render_bench_report(bench_dir: str | Path, results: dict[str, Any]) -> str:
    """The page for ``results`` (as :func:`atari_vlm.bench.results.build_results` returns them)."""
    require("matplotlib", extra="report")
    bench_dir = Path(bench_dir)
    table = results["table"]
    level = f"{results['bootstrap']['confidence'] * 100:g}%"
    notes = []
    if any(r["truncated_episodes"] and r["human_normalized"] for r in results["rows"]):
        notes.append(
            "* Some episodes were cut short by a step cap: the reference scores are for whole games, "
            "so these human-normalized numbers are not comparable to them."
        )
    if any(r["random_weights"] for r in results["rows"]):
        notes.append("RANDOM WEIGHTS: that model's moves are noise; its rows measure the pipeline, not play.")
    published = "".join(
        f"<li>{_e(p['model'])}: {p['value'] * 100:.1f}% {_e(p['metric'])} "
        f"({_e(p['protocol'])}; {_e(p['source'])})</li>"
        for p in results["published"]
    )
    skipped = "".join(f"<li>{_e(s['path'])}: {_e(s['reason'])}</li>" for s in results["skipped"])
    body = f"""
<h1>Benchmark: {_e(bench_dir.resolve().name)}</h1>
<div class="sub">atari-vlm bench report &middot; {len(results["rows"])} rows</div>
<p class="note">Human-normalized with the {_e(table["title"])} reference scores ({_e(table["source"])}):
0% plays like the random policy, 100% like the human tester. Intervals: {_e(level)} stratified bootstrap
({results["bootstrap"]["reps"]} resamples, seed {results["bootstrap"]["seed"]}); episodes are the
resampled runs. "$ / point above random" is the cost of an episode divided by how far its mean return
beats the random agent's on the same seeds (shown only where it does).</p>
{"".join(f"<p class='banner'>{_e(n)}</p>" for n in notes)}
<h2>Plots</h2>
<div class="plots">{"".join(_plots(results)) or "<p>No data to plot.</p>"}</div>
<h2>Per game</h2>
{_results_table(bench_dir, results)}
<h2>Aggregates over games (human-normalized)</h2>
{_aggregates_table(results)}
<h2>Published, not measured</h2>
<p class="note">Numbers reported in papers, for orientation only: they were NOT produced by these runs.</p>
<ul>{published}</ul>
{f"<h2>Skipped</h2><ul>{skipped}</ul>" if skipped else ""}
"""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy"
  content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'">
<title>Benchmark: {_e(bench_dir.resolve().name)}</title>
<style>{_CSS}
table.grid td:nth-child(-n+4) {{ text-align: left; }}
main {{ max-width: 1400px; }}
</style>
</head>
<body><main>{body}</main></body>
</html>
"""


def write_bench_report(bench_dir: str | Path, results: dict[str, Any]) -> Path:
    """Write ``report.html`` at the bench root for ``results`` (and each run's own report where it is
    missing or stale, so that every row links to its viewer); returns its path.

    Raises:
        DependencyNotInstalled: matplotlib is missing (``pip install "atari-vlm[report]"``).
    """
    bench_dir = Path(bench_dir)
    require("matplotlib", extra="report")
    _write_run_reports(results, bench_dir)
    path = bench_dir / "report.html"
    write_text_atomic(path, render_bench_report(bench_dir, results))
    return path
