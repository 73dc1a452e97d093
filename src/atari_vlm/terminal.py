"""What the command line prints, shaped for whoever reads it: consoles as wide as the real terminal
(unwrapped when nothing is a terminal), tables that fit by dropping their least needed columns (never
splitting a name), one-line errors, rounded numbers, progress bars that end at the real total, and
quiet libraries underneath unless ``--verbose``.

Piped output is not forced to 80 columns: ``COLUMNS`` when set, else the width of whichever standard
stream is a terminal (``atari-vlm models | less`` still knows the screen), else no wrapping at all.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

__all__ = [
    "UNBOUNDED",
    "Column",
    "DecisionProgress",
    "error_line",
    "fit_columns",
    "make_console",
    "num",
    "print_json",
    "printable",
    "quiet_libraries",
    "render_table",
    "terminal_width",
    "usd",
]

UNBOUNDED = 100_000
"""The width of a console with no terminal behind it: lines are never wrapped."""


def terminal_width() -> int | None:
    """The width to print at: ``COLUMNS``, else a terminal on stdout, stderr or stdin, else None."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    for stream in (sys.stdout, sys.stderr, sys.stdin):
        try:
            if stream is not None and stream.isatty():
                return os.get_terminal_size(stream.fileno()).columns or None
        except (AttributeError, ValueError, OSError):
            continue
    return None


def make_console(*, stderr: bool = False) -> Console:
    """A console at :func:`terminal_width`, or unbounded (no wrapping) when there is none."""
    width = terminal_width()
    return Console(
        stderr=stderr, highlight=False, emoji=False, width=width or UNBOUNDED, soft_wrap=width is None
    )


def error_line(console: Console, label: str, message: str) -> None:
    """``label: message`` as exactly one line, never wrapped, whatever the width."""
    console.print(f"[red]{label}:[/red] {escape(printable(' '.join(str(message).split())))}", soft_wrap=True)


def print_json(data: Any) -> None:
    """Machine-readable output for scripts (``--json``): one JSON document on stdout, nothing else."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


# --- numbers --------------------------------------------------------------------------------------


def num(value: float | None, digits: int = 2) -> str:
    """A score or a count as people read it: ``-20.33``, ``1739``, ``0.33`` (never ``0.333333``)."""
    if value is None:
        return "-"
    rounded = round(float(value), digits)
    if rounded == int(rounded) and abs(rounded) < 1e15:
        return str(int(rounded))
    return f"{rounded:.{digits}f}".rstrip("0").rstrip(".")


def usd(value: float | None) -> str:
    """Dollars: cents above a dollar, three significant digits below (``$0.000375``), "unknown" for None."""
    if value is None:
        return "unknown"
    if value == 0:
        return "$0"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    digits = max(2, 2 - math.floor(math.log10(abs(value))))
    text = f"{value:.{digits}f}".rstrip("0")
    return "$" + text + "0" * max(0, 2 - len(text.split(".")[1]))


# --- tables ---------------------------------------------------------------------------------------

_CONTROL = {c: "\ufffd" for c in (*range(0, 9), *range(11, 32), *range(127, 160))}


def printable(text: str) -> str:
    """``text`` with control characters (an ANSI escape from a run directory's names) made harmless:
    rich strips a few of them, not ESC."""
    return str(text).translate(_CONTROL)


@dataclass(frozen=True)
class Column:
    """One table column and how much it is needed: ``priority`` 0 is always shown, higher ones go
    first when the terminal is narrow. ``wrap`` columns (prose) may wrap at spaces, down to
    ``min_width``; the others (names, numbers) are never split."""

    header: str
    priority: int = 0
    justify: str = "left"
    wrap: bool = False
    min_width: int = 12


_BORDER = 3  # a cell's padding and its rule, per column ("│ x " ... plus one closing rule)


def _need(column: Column, cells: Sequence[str]) -> int:
    """The width a column takes: a wrapping one wraps its header and cells down to ``min_width``; the
    others take their longest line (header included: rich does not wrap it either)."""
    longest = max((len(line) for c in cells for line in c.splitlines()), default=0)
    if column.wrap:
        header = max((len(w) for w in column.header.split()), default=0)
        return max(header, min(column.min_width, longest))
    return max(len(column.header), longest)


def fit_columns(columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int | None) -> list[int]:
    """Indices of the columns to show at ``width`` (None: all): every priority-0 column, then the
    others by priority while the table still fits."""
    if width is None:
        return list(range(len(columns)))
    needs = [_need(c, [r[i] for r in rows]) for i, c in enumerate(columns)]
    keep = {i for i, c in enumerate(columns) if c.priority == 0}
    used = 1 + sum(needs[i] + _BORDER for i in keep)
    for i in sorted((i for i in range(len(columns)) if i not in keep), key=lambda i: columns[i].priority):
        if used + needs[i] + _BORDER <= width:
            keep.add(i)
            used += needs[i] + _BORDER
    return sorted(keep)


def render_table(
    console: Console,
    columns: Sequence[Column],
    rows: Sequence[Sequence[str]],
    *,
    title: str | None = None,
    wide: bool = False,
) -> list[str]:
    """Print the columns that fit ``console`` (all with ``wide``, on lines as long as they need);
    returns the headers left out, so the caller can say how to see them. Cells are plain text."""
    bounded = console.width < UNBOUNDED and not wide
    shown = fit_columns(columns, rows, console.width if bounded else None)
    table = Table(title=title, title_justify="left")
    for i in shown:
        c = columns[i]
        table.add_column(c.header, justify=c.justify, no_wrap=not c.wrap, overflow="fold")  # type: ignore[arg-type]
    for row in rows:
        table.add_row(*(escape(printable(row[i])) for i in shown))
    if bounded:
        console.print(table)
    else:
        Console(file=console.file, highlight=False, emoji=False, width=UNBOUNDED, soft_wrap=True).print(
            table, crop=False
        )
    return [columns[i].header for i in range(len(columns)) if i not in shown]


# --- progress -------------------------------------------------------------------------------------


class DecisionProgress:
    """One bar over the decisions a run (or a whole sweep) may take, ending at the real total.

    A run's total is its bound (``max_steps`` per episode, or ALE's frame cap): when an episode ends
    sooner, :meth:`episode_ended` takes what it did not play off the total, so the bar finishes full.
    ``cost`` (dollars so far) shows beside it when the model has a price.
    """

    def __init__(self, console: Console, description: str, *, unit: str = "decisions") -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(unit),
            TextColumn("{task.fields[cost]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._task = self._progress.add_task(description, total=None, cost="", start=False)
        self._started = False

    def start(self, total: int | None = None) -> None:
        self._progress.update(self._task, total=total)
        self._progress.start_task(self._task)
        if not self._started:
            self._progress.start()
            self._started = True

    def add_total(self, n: int) -> None:
        task = self._progress.tasks[0]
        self._progress.update(self._task, total=(task.total or 0) + n)

    def describe(self, description: str) -> None:
        self._progress.update(self._task, description=description)

    def advance(self, n: int = 1) -> None:
        self._progress.advance(self._task, n)

    def set_completed(self, n: int) -> None:
        self._progress.update(self._task, completed=n)

    def episode_ended(self, planned: int, played: int) -> None:
        """An episode bounded by ``planned`` decisions ended after ``played``."""
        task = self._progress.tasks[0]
        if task.total is not None and planned > played:
            self._progress.update(self._task, total=max(task.completed, task.total - (planned - played)))

    def cost(self, spent_usd: float | None) -> None:
        self._progress.update(self._task, cost="" if spent_usd is None else usd(spent_usd))

    def print(self, *objects: Any, **kwargs: Any) -> None:
        """A line above the bar."""
        self._progress.console.print(*objects, **kwargs)

    @property
    def totals(self) -> tuple[float, float | None]:
        task = self._progress.tasks[0]
        return task.completed, task.total

    def stop(self) -> None:
        if self._started:
            self._progress.stop()
            self._started = False


# --- quiet libraries ------------------------------------------------------------------------------

_NOISY_MODULES = (
    "torch",
    "transformers",
    "bitsandbytes",
    "kernels",  # bitsandbytes' CPU kernels: "Skipping publisher trust check ..." when offline
    "peft",
    "accelerate",
    "huggingface_hub",
    "gymnasium",
)


def quiet_libraries(verbose: bool = False, *, ale: bool = True) -> None:
    """Silence what the libraries underneath print on their own (ALE's banner, transformers' and
    bitsandbytes' warnings), unless ``verbose``. Environment variables reach worker processes too.

    ALE: ``ALEInterface.setLoggerMode(LoggerMode.Error)``, a class method, silences the
    "A.L.E: Arcade Learning Environment" banner of every later ALE (the ALE maintainers' answer in
    Farama-Foundation/Arcade-Learning-Environment#456, 2022-04-26). transformers: ``TRANSFORMERS_VERBOSITY``
    and ``TRANSFORMERS_NO_ADVISORY_WARNINGS`` (its logging docs). ``ale=False`` for commands that play
    no game (importing ale_py takes half a second).
    """
    if verbose:
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for module in _NOISY_MODULES:
        warnings.filterwarnings("ignore", module=rf"{module}(\..*)?")
        logging.getLogger(module).setLevel(logging.ERROR)
    if not ale:
        return
    try:
        from ale_py import ALEInterface, LoggerMode
    except ImportError:  # no ALE, no banner
        return
    ALEInterface.setLoggerMode(LoggerMode.Error)
