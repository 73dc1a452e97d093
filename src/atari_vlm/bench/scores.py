"""Reference scores and aggregate metrics: how good a return is, and how sure we are of it.

A raw return means little across games (Pong runs from -21 to 21, Seaquest into the tens of
thousands), so results are *human-normalized*: ``(score - random) / (human - random)``, 0 for the
random policy and 1 for the human tester of the source table. Across games we report the mean, the
median and the interquartile mean (IQM), each with a stratified bootstrap 95% confidence interval, as
recommended by Agarwal et al., "Deep Reinforcement Learning at the Edge of the Statistical Precipice"
(NeurIPS 2021) and done by their ``rliable`` library: runs are resampled with replacement *within*
each game, so every bootstrap sample keeps every game.

The reference scores are data, with their sources; only values taken from those sources are listed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from atari_vlm.errors import ConfigError


@dataclass(frozen=True)
class ReferenceTable:
    """Per-game (random, human) reference scores from one published source."""

    name: str
    title: str
    source: str
    scores: Mapping[str, tuple[float, float]]  # canonical ALE game name -> (random, human)


# Mnih et al., "Human-level control through deep reinforcement learning", Nature 518 (2015),
# Extended Data Table 2 ("Random play" and "Human" columns; professional human games tester, 30 NOOP
# starts, 5 minutes of play per episode). Values to one decimal as transcribed in rldb
# (github.com/seungjaeryanlee/rldb, paper__dqn); the Nature table prints large values rounded.
_DQN_NATURE: dict[str, tuple[float, float]] = {
    "Alien": (227.8, 6875.4),
    "Amidar": (5.8, 1675.8),
    "Assault": (222.4, 1496.4),
    "Asterix": (210.0, 8503.3),
    "Asteroids": (719.1, 13156.7),
    "Atlantis": (12850.0, 29028.1),
    "BankHeist": (14.2, 734.4),
    "BattleZone": (2360.0, 37800.0),
    "BeamRider": (363.9, 5774.7),
    "Bowling": (23.1, 154.8),
    "Boxing": (0.1, 4.3),
    "Breakout": (1.7, 31.8),
    "Centipede": (2090.9, 11963.2),
    "ChopperCommand": (811.0, 9881.8),
    "CrazyClimber": (10780.5, 35410.5),
    "DemonAttack": (152.1, 3401.3),
    "DoubleDunk": (-18.6, -15.5),
    "Enduro": (0.0, 309.6),
    "FishingDerby": (-91.7, 5.5),
    "Freeway": (0.0, 29.6),
    "Frostbite": (65.2, 4334.7),
    "Gopher": (257.6, 2321.0),
    "Gravitar": (173.0, 2672.0),
    "Hero": (1027.0, 25762.5),
    "IceHockey": (-11.2, 0.9),
    "Jamesbond": (29.0, 406.7),
    "Kangaroo": (52.0, 3035.0),
    "Krull": (1598.0, 2394.6),
    "KungFuMaster": (258.5, 22736.2),
    "MontezumaRevenge": (0.0, 4366.7),
    "MsPacman": (307.3, 15693.4),
    "NameThisGame": (2292.3, 4076.2),
    "Pong": (-20.7, 9.3),
    "PrivateEye": (24.9, 69571.3),
    "Qbert": (163.9, 13455.0),
    "Riverraid": (1338.5, 13513.3),
    "RoadRunner": (11.5, 7845.0),
    "Robotank": (2.2, 11.9),
    "Seaquest": (68.4, 20181.8),
    "SpaceInvaders": (148.0, 1652.3),
    "StarGunner": (664.0, 10250.0),
    "Tennis": (-23.8, -8.9),
    "TimePilot": (3568.0, 5925.0),
    "Tutankham": (11.4, 167.6),
    "UpNDown": (533.4, 9082.0),
    "Venture": (0.0, 1187.5),
    "VideoPinball": (16256.9, 17297.6),
    "WizardOfWor": (563.5, 4756.5),
    "Zaxxon": (32.5, 9173.3),
}

# The Atari-57 table of later papers (human scores re-measured for some games; 57 games), as used by
# Agent57 (Badia et al. 2020), MuZero and rliable, and published in DeepMind's dqn_zoo
# (github.com/google-deepmind/dqn_zoo, dqn_zoo/atari_data.py).
_ATARI_57: dict[str, tuple[float, float]] = {
    "Alien": (227.8, 7127.7),
    "Amidar": (5.8, 1719.5),
    "Assault": (222.4, 742.0),
    "Asterix": (210.0, 8503.3),
    "Asteroids": (719.1, 47388.7),
    "Atlantis": (12850.0, 29028.1),
    "BankHeist": (14.2, 753.1),
    "BattleZone": (2360.0, 37187.5),
    "BeamRider": (363.9, 16926.5),
    "Berzerk": (123.7, 2630.4),
    "Bowling": (23.1, 160.7),
    "Boxing": (0.1, 12.1),
    "Breakout": (1.7, 30.5),
    "Centipede": (2090.9, 12017.0),
    "ChopperCommand": (811.0, 7387.8),
    "CrazyClimber": (10780.5, 35829.4),
    "Defender": (2874.5, 18688.9),
    "DemonAttack": (152.1, 1971.0),
    "DoubleDunk": (-18.6, -16.4),
    "Enduro": (0.0, 860.5),
    "FishingDerby": (-91.7, -38.7),
    "Freeway": (0.0, 29.6),
    "Frostbite": (65.2, 4334.7),
    "Gopher": (257.6, 2412.5),
    "Gravitar": (173.0, 3351.4),
    "Hero": (1027.0, 30826.4),
    "IceHockey": (-11.2, 0.9),
    "Jamesbond": (29.0, 302.8),
    "Kangaroo": (52.0, 3035.0),
    "Krull": (1598.0, 2665.5),
    "KungFuMaster": (258.5, 22736.3),
    "MontezumaRevenge": (0.0, 4753.3),
    "MsPacman": (307.3, 6951.6),
    "NameThisGame": (2292.3, 8049.0),
    "Phoenix": (761.4, 7242.6),
    "Pitfall": (-229.4, 6463.7),
    "Pong": (-20.7, 14.6),
    "PrivateEye": (24.9, 69571.3),
    "Qbert": (163.9, 13455.0),
    "Riverraid": (1338.5, 17118.0),
    "RoadRunner": (11.5, 7845.0),
    "Robotank": (2.2, 11.9),
    "Seaquest": (68.4, 42054.7),
    "Skiing": (-17098.1, -4336.9),
    "Solaris": (1236.3, 12326.7),
    "SpaceInvaders": (148.0, 1668.7),
    "StarGunner": (664.0, 10250.0),
    "Surround": (-10.0, 6.5),
    "Tennis": (-23.8, -8.3),
    "TimePilot": (3568.0, 5229.2),
    "Tutankham": (11.4, 167.6),
    "UpNDown": (533.4, 11693.2),
    "Venture": (0.0, 1187.5),
    "VideoPinball": (16256.9, 17667.9),
    "WizardOfWor": (563.5, 4756.5),
    "YarsRevenge": (3092.9, 54576.9),
    "Zaxxon": (32.5, 9173.3),
}

TABLES: Mapping[str, ReferenceTable] = MappingProxyType(
    {
        "dqn_nature": ReferenceTable(
            "dqn_nature",
            "DQN Nature 2015 (49 games)",
            "Mnih et al. 2015, Nature 518:529-533, Extended Data Table 2",
            MappingProxyType(_DQN_NATURE),
        ),
        "atari57": ReferenceTable(
            "atari57",
            "Atari-57 (57 games)",
            "Atari-57 table of Badia et al. 2020 (Agent57) and rliable; DeepMind dqn_zoo atari_data.py",
            MappingProxyType(_ATARI_57),
        ),
    }
)

DEFAULT_TABLE = "dqn_nature"


@dataclass(frozen=True)
class PublishedScore:
    """A number from a paper, shown beside measured results and never mixed with them."""

    model: str
    value: float  # a fraction: 0.232 is 23.2%
    metric: str
    protocol: str
    games: tuple[str, ...]
    source: str
    label: str = "published, not measured"


_ATARI_GPT_GAMES = ("Alien", "Breakout", "Frogger", "MsPacman", "Pong", "Seaquest", "SpaceInvaders")
_ATARI_GPT_SOURCE = (
    "Waytowich et al. 2024, 'Atari-GPT: Benchmarking Multimodal Large Language Models as Low-Level "
    "Policies in Atari Games', arXiv:2408.15950"
)

PUBLISHED: tuple[PublishedScore, ...] = tuple(
    PublishedScore(
        model=model,
        value=value,
        metric="mean human-normalized score over 7 games",
        protocol="atari-gpt",
        games=_ATARI_GPT_GAMES,
        source=_ATARI_GPT_SOURCE,
    )
    for model, value in (
        ("GPT-4o", 0.232),
        ("GPT-4V Turbo", 0.184),
        ("Claude 3 Haiku", 0.124),
        ("Gemini 1.5 Flash", 0.085),
    )
)


def _table(table: str) -> ReferenceTable:
    if table not in TABLES:
        raise ConfigError(f"unknown reference table {table!r}; choose one of {sorted(TABLES)}")
    return TABLES[table]


def reference_scores(game: str, table: str = DEFAULT_TABLE) -> tuple[float, float]:
    """``(random, human)`` for ``game`` (any spelling :func:`atari_vlm.games.resolve_game` accepts).

    Raises:
        ConfigError: unknown table or game, or the table has no score for the game.
    """
    from atari_vlm.games import resolve_game

    ref = _table(table)
    name = resolve_game(game)
    if name not in ref.scores:
        others = [t.name for t in TABLES.values() if name in t.scores]
        hint = f"tables that have it: {others}" if others else "no table here has it"
        raise ConfigError(f"the {table!r} table has no reference score for {name}; {hint}")
    return ref.scores[name]


def has_reference(game: str, table: str = DEFAULT_TABLE) -> bool:
    """Whether ``game`` can be human-normalized with ``table`` (unknown games give False)."""
    try:
        reference_scores(game, table)
    except ConfigError:
        return False
    return True


def human_normalized(game: str, score: Any, table: str = DEFAULT_TABLE) -> Any:
    """``(score - random) / (human - random)``: 0 plays like random, 1 like the table's human.

    ``score`` may be a number or a numpy array (normalized elementwise).

    Example:
        >>> round(human_normalized("Pong", 9.3), 6)
        1.0

    Raises:
        ConfigError: as :func:`reference_scores`.
    """
    random, human = reference_scores(game, table)
    if isinstance(score, (list, tuple)):
        score = np.asarray(score, dtype=float)
    return (score - random) / (human - random)


# --- aggregates --------------------------------------------------------------------------------------

Scores = Mapping[str, Sequence[float]] | Sequence[float] | np.ndarray
# A batched aggregate takes one (batch, runs_of_game) array per game and gives one value per batch row.
BatchedAggregate = Callable[[Sequence[np.ndarray]], np.ndarray]


def _per_game(scores: Scores) -> list[np.ndarray]:
    """Per-game 1-D arrays of run scores, from a {game: runs} mapping, one run list (one game), or a
    (runs, games) matrix as rliable takes it. Games may have different numbers of runs."""
    if isinstance(scores, Mapping):
        if not scores:
            raise ConfigError("no scores to aggregate: the mapping of games is empty")
        games = [np.asarray(scores[g], dtype=float) for g in sorted(scores)]
        names = sorted(scores)
    else:
        array = np.asarray(scores, dtype=float)
        if array.ndim not in (1, 2):
            raise ConfigError(f"scores must be 1-D (one game) or 2-D (runs x games), got shape {array.shape}")
        games = [array] if array.ndim == 1 else [array[:, j] for j in range(array.shape[1])]
        names = [f"game {j}" for j in range(len(games))]
    for name, runs in zip(names, games, strict=True):
        if runs.ndim != 1 or runs.size == 0:
            raise ConfigError(f"{name}: needs a non-empty list of run scores, got shape {runs.shape}")
        if not np.all(np.isfinite(runs)):
            raise ConfigError(f"{name}: scores must be finite numbers, got {runs.tolist()}")
    return games


def _batched_mean(games: Sequence[np.ndarray]) -> np.ndarray:
    return np.stack([g.mean(axis=1) for g in games], axis=1).mean(axis=1)


def _batched_median(games: Sequence[np.ndarray]) -> np.ndarray:
    return np.median(np.stack([g.mean(axis=1) for g in games], axis=1), axis=1)


def _batched_iqm(games: Sequence[np.ndarray]) -> np.ndarray:
    """Mean of the middle 50% of all runs of all games pooled (scipy.stats.trim_mean at 0.25)."""
    pooled = np.sort(np.concatenate(games, axis=1), axis=1)
    n = pooled.shape[1]
    cut = int(0.25 * n)
    return pooled[:, cut : n - cut].mean(axis=1)


# Mean and median are over games of each game's mean over runs; IQM pools all runs (as rliable).
AGGREGATES: Mapping[str, BatchedAggregate] = MappingProxyType(
    {"mean": _batched_mean, "median": _batched_median, "iqm": _batched_iqm}
)


def _aggregate(name_or_fn: str | BatchedAggregate) -> BatchedAggregate:
    if callable(name_or_fn):
        return name_or_fn
    if name_or_fn not in AGGREGATES:
        raise ConfigError(f"unknown aggregate {name_or_fn!r}; choose one of {sorted(AGGREGATES)}")
    return AGGREGATES[name_or_fn]


def _point(scores: Scores, aggregate: str | BatchedAggregate) -> float:
    return float(_aggregate(aggregate)([g[None, :] for g in _per_game(scores)])[0])


def mean_score(scores: Scores) -> float:
    """Mean over games of each game's mean over runs."""
    return _point(scores, "mean")


def median_score(scores: Scores) -> float:
    """Median over games of each game's mean over runs (robust to one outlier game)."""
    return _point(scores, "median")


def iqm(scores: Scores) -> float:
    """Interquartile mean of all runs of all games: robust like the median, efficient like the mean.

    Example:
        >>> iqm([1, 2, 3, 4, 5, 6, 7, 100])
        4.5
    """
    return _point(scores, "iqm")


@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval ``[low, high]``."""

    point: float
    low: float
    high: float
    confidence: float = 0.95

    def to_dict(self) -> dict[str, float]:
        return {"point": self.point, "low": self.low, "high": self.high, "confidence": self.confidence}


def stratified_bootstrap_ci(
    scores: Scores,
    aggregate: str | BatchedAggregate = "iqm",
    *,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap confidence interval of an aggregate, resampling runs within each game.

    The same ``seed`` gives the same interval (a numpy ``Generator`` drives all resampling, games in
    sorted order).

    Args:
        scores: {game: run scores}, one game's run scores, or a (runs, games) matrix.
        aggregate: "mean", "median", "iqm", or a batched aggregate function.
        reps: bootstrap samples.
        confidence: e.g. 0.95 for a 95% interval.
        seed: seed of the resampling.

    Raises:
        ConfigError: empty or non-finite scores, bad reps or confidence.
    """
    if isinstance(reps, bool) or not isinstance(reps, int) or reps < 1:
        raise ConfigError(f"reps must be an integer >= 1, got {reps!r}")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must be between 0 and 1 (exclusive), got {confidence!r}")
    fn = _aggregate(aggregate)
    games = _per_game(scores)
    rng = np.random.default_rng(seed)
    samples = [g[rng.integers(0, g.size, size=(reps, g.size))] for g in games]
    values = fn(samples)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    point = float(fn([g[None, :] for g in games])[0])
    return Interval(point=point, low=float(low), high=float(high), confidence=confidence)


def aggregate_with_ci(
    scores: Scores, *, reps: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict[str, Interval]:
    """Mean, median and IQM, each with its stratified bootstrap interval."""
    return {
        name: stratified_bootstrap_ci(scores, name, reps=reps, confidence=confidence, seed=seed)
        for name in AGGREGATES
    }
