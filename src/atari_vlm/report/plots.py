"""The report's plots, as PNG bytes (matplotlib, Agg backend, no pyplot global state).

matplotlib is the optional extra ``report``; it is imported only when a plot is drawn.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from atari_vlm.errors import require

ACCENT = "#2563eb"
MUTED = "#9ca3af"
MAX_LINES = 12  # cumulative-reward lines drawn before the plot stops being readable


def _figure(width: float = 6.4, height: float = 3.0) -> Any:
    """A new Figure drawn by the Agg canvas (the object API never touches a GUI backend)."""
    require("matplotlib", extra="report")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _axes(fig: Any, title: str, xlabel: str, ylabel: str) -> Any:
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=11, loc="left")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return ax


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def returns_plot(episodes: Sequence[int], returns: Sequence[float]) -> bytes:
    """Return of every episode, with the mean as a dashed line."""
    fig = _figure()
    ax = _axes(fig, "Return per episode", "episode", "return")
    ax.bar(range(len(returns)), returns, color=ACCENT, width=0.8 if len(returns) > 1 else 0.4)
    if len(returns) <= 20:  # beyond that matplotlib's own ticks read better than one per bar
        ax.set_xticks(range(len(returns)), [str(e) for e in episodes])
    if returns:
        mean = sum(returns) / len(returns)
        ax.axhline(mean, color="#111827", linestyle="--", linewidth=1, label=f"mean {mean:.1f}")
        ax.legend(frameon=False)
    return _png(fig)


def cumulative_reward_plot(per_episode: Mapping[int, Sequence[float]]) -> bytes:
    """Cumulative reward against decision step within each episode (the first MAX_LINES episodes)."""
    fig = _figure()
    shown = list(per_episode)[:MAX_LINES]
    title = "Cumulative reward within each episode"
    if len(per_episode) > len(shown):
        title += f" (first {len(shown)} of {len(per_episode)})"
    ax = _axes(fig, title, "step", "return so far")
    for episode in shown:
        values = per_episode[episode]
        ax.plot(range(1, len(values) + 1), values, linewidth=1.2, label=f"episode {episode}")
    if 1 < len(shown) <= 6:
        ax.legend(frameon=False, fontsize=8)
    return _png(fig)


def latency_histogram(latencies: Sequence[float]) -> bytes:
    """Distribution of model latency per decision, with the median marked."""
    fig = _figure()
    ax = _axes(fig, "Model latency per decision", "seconds", "decisions")
    ax.hist(latencies, bins=min(40, max(5, len(latencies) // 5)), color=ACCENT)
    median = float(np.median(latencies))
    ax.axvline(median, color="#111827", linestyle="--", linewidth=1, label=f"median {median:.3f} s")
    ax.legend(frameon=False)
    return _png(fig)


def learning_curve_plot(records: Sequence[Mapping[str, float]]) -> bytes:
    """Evaluation return over training (mean with a ±std band) and the random baseline, when given.

    Records carry ``episode`` (x), ``eval_mean_return``, and optionally ``eval_std`` and
    ``random_mean_return``.
    """
    fig = _figure()
    ax = _axes(fig, "Learning curve", "training episode", "evaluation return")
    xs = [r["episode"] for r in records]
    ys = [r["eval_mean_return"] for r in records]
    ax.plot(xs, ys, color=ACCENT, marker="o", markersize=3, label="evaluation mean")
    if all(r.get("eval_std") is not None for r in records):
        lo = [y - r["eval_std"] for y, r in zip(ys, records, strict=True)]
        hi = [y + r["eval_std"] for y, r in zip(ys, records, strict=True)]
        ax.fill_between(xs, lo, hi, color=ACCENT, alpha=0.15, label="± std")
    randoms = [
        (x, r["random_mean_return"])
        for x, r in zip(xs, records, strict=True)
        if r.get("random_mean_return") is not None
    ]
    if randoms:
        ax.plot(*zip(*randoms, strict=True), color=MUTED, linestyle="--", label="random agent")
    ax.legend(frameon=False)
    return _png(fig)


def interval_plot(
    title: str,
    xlabel: str,
    labels: Sequence[str],
    intervals: Sequence[tuple[float, float, float]],
    *,
    references: Sequence[tuple[str, float, str]] = (),
) -> bytes:
    """One row per label: the point with its confidence interval as whiskers (``(point, low, high)``),
    and vertical reference lines ``(name, value, style)`` (the random agent, the expert, a human)."""
    lines = sum(label.count("\n") + 1 for label in labels)
    height = 1.2 + 0.22 * max(2, lines) + 0.12 * len(labels)
    fig = _figure(7.2, min(height, 14.0))
    ax = _axes(fig, title, xlabel, "")
    ys = list(range(len(labels)))[::-1]
    points = [p for p, _, _ in intervals]
    lower = [max(0.0, p - lo) for p, lo, _ in intervals]
    upper = [max(0.0, hi - p) for p, _, hi in intervals]
    ax.errorbar(
        points, ys, xerr=[lower, upper], fmt="o", color=ACCENT, ecolor=ACCENT, capsize=4, markersize=5
    )
    ax.set_yticks(ys, list(labels), fontsize=8)
    colors = {"random": MUTED, "expert": "#047857", "human": "#b45309"}
    for name, value, style in references:
        ax.axvline(
            value,
            color=colors.get(name.split()[0], "#111827"),
            linestyle=style,
            linewidth=1.2,
            label=f"{name} {value:,.1f}",
        )
    if references:
        ax.legend(frameon=False, fontsize=8, loc="best")
    ax.margins(y=0.4 / max(1, len(labels)))
    return _png(fig)
