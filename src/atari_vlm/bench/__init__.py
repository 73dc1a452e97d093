"""Fair benchmarks: published reference scores, evaluation protocols, and results tables.

- :mod:`atari_vlm.bench.scores`: random and human reference scores (data, with sources),
  human-normalized scores, and mean / median / IQM with stratified bootstrap confidence intervals.
- :mod:`atari_vlm.bench.protocols`: evaluation protocols as frozen data, built in or loaded from a file.
- :mod:`atari_vlm.bench.results`: the results table of a set of run directories (markdown, CSV, JSON).
"""

from __future__ import annotations

from atari_vlm.bench.protocols import PROTOCOLS, Protocol, load_protocol
from atari_vlm.bench.results import build_results, collect_run_dirs, write_results
from atari_vlm.bench.scores import (
    PUBLISHED,
    TABLES,
    Interval,
    aggregate_with_ci,
    human_normalized,
    iqm,
    mean_score,
    median_score,
    reference_scores,
    stratified_bootstrap_ci,
)

__all__ = [
    "PROTOCOLS",
    "PUBLISHED",
    "TABLES",
    "Interval",
    "Protocol",
    "aggregate_with_ci",
    "build_results",
    "collect_run_dirs",
    "human_normalized",
    "iqm",
    "load_protocol",
    "mean_score",
    "median_score",
    "reference_scores",
    "stratified_bootstrap_ci",
    "write_results",
]
