"""``atari-vlm``: the command line. Thin: it parses arguments and calls the library.

Exit codes: 0 success, 2 bad input (the message says what was wrong and what would be right),
1 a failure during the run (a model that stopped answering, say).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from atari_vlm import __version__
from atari_vlm.errors import ConfigError, DiskFull, ModelError, Terminated
from atari_vlm.terminal import (
    DecisionProgress,
    error_line,
    make_console,
    num,
    print_json,
    quiet_libraries,
    usd,
)

# Made again by main() for the terminal it runs in (COLUMNS, or none when piped: no wrapping).
err = make_console(stderr=True)
out = make_console()


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's default in ``--help`` (the spec's options carry theirs in their help already)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or not action.option_strings or default in (None, False, [], argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


class _Parser(argparse.ArgumentParser):
    def _add_action(self, action: argparse.Action) -> argparse.Action:
        meaningful = action.default not in (None, False, [], argparse.SUPPRESS)
        if action.help is None and action.option_strings and meaningful:
            action.help = "default: %(default)s"  # argparse shows nothing for an option without help
        return super()._add_action(action)

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        error_line(err, "error", f"{message} (see `{self.prog} --help`)")
        raise SystemExit(2)


SECTION_TITLES: dict[str | None, str] = {
    "env": "environment",
    "observation": "what the model sees",
    "prompt": "prompt",
    "decoding": "decoding",
    "model": "model",
    "train": "training",
    "sweep": "sweep",
    None: "run",
}
ALL = "all"


def _shown(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    return str(value)


def _reader(read: Callable[[str], object]) -> Callable[[str], object]:
    """An option's text parser whose failures read as one clear line ("expected an integer, got 'x'")."""
    what = {int: "an integer", float: "a number"}.get(read)  # type: ignore[call-overload]

    def parse(text: str) -> object:
        try:
            return read(text)
        except (ValueError, ConfigError) as exc:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}" if what else str(exc)) from None

    return parse


def add_spec_arguments(
    parser: argparse.ArgumentParser,
    sections: dict[str | None, Sequence[str] | str],
    *,
    exclude: Sequence[str] = (),
    defaults: dict[str, object] | None = None,
    aliases: dict[str, Sequence[str]] | None = None,
) -> None:
    """Add the CLI options of the spec's settings, one per field, as the spec declares them.

    ``sections`` maps a section name (None: the run's own settings) to the fields to offer, or ALL.
    Options left out of the command line are not set on the namespace (``argparse.SUPPRESS``), so
    :func:`given_settings` returns exactly what the user typed; ``defaults`` are what this command
    shows and uses instead of the spec's own default.
    """
    from atari_vlm.spec import RunSpec, SweepSpec

    defaults, aliases = defaults or {}, aliases or {}
    classes: dict[str | None, type] = {**RunSpec.SECTIONS, "sweep": SweepSpec, None: RunSpec}
    names: list[str] = list(getattr(parser, "_spec_names", ()))
    for section, wanted in sections.items():
        group = parser.add_argument_group(SECTION_TITLES[section])
        for name, setting, default in classes[section].settings():
            if not setting.cli or name in exclude or (wanted != ALL and name not in wanted):
                continue
            default = defaults.get(name, default)
            flag = setting.flag or "--" + name.replace("_", "-")
            flags = [flag, *setting.aliases, *aliases.get(name, ())]
            options: dict[str, object] = {"dest": name, "default": argparse.SUPPRESS}
            text = f"{setting.help} (default: {_shown(default)})"
            if isinstance(default, bool) and not setting.on_off:
                options["action"] = argparse.BooleanOptionalAction
            else:
                options["type"] = _reader(setting.read)
                if setting.on_off:
                    options["metavar"] = "on|off"
                elif setting.choices:
                    options["choices"] = list(setting.choices)
                elif setting.metavar:
                    options["metavar"] = setting.metavar
            group.add_argument(*flags, help=text.replace("%", "%%"), **options)  # type: ignore[arg-type]
            names.append(name)
    parser._spec_names = names  # type: ignore[attr-defined]
    command_defaults = {**getattr(parser, "_spec_command_defaults", {}), **defaults}
    parser._spec_command_defaults = command_defaults  # type: ignore[attr-defined]
    parser.set_defaults(_spec_defaults=command_defaults, _spec_names=tuple(names))


def given_settings(args: argparse.Namespace, *, with_defaults: bool = True) -> dict[str, object]:
    """The spec settings on the command line, plus (``with_defaults``) this command's own defaults for
    those not given."""
    known = set(getattr(args, "_spec_names", ()))
    given = {k: v for k, v in vars(args).items() if k in known}
    if with_defaults:
        for name, value in getattr(args, "_spec_defaults", {}).items():
            given.setdefault(name, value)
    return given


def _check_executor_args(settings: dict[str, object]) -> None:
    if settings.get("ray_address") is not None and settings.get("executor", "local") != "ray":
        raise ConfigError("--ray-address needs --executor ray")


PLAY_SECTIONS: dict[str | None, Sequence[str] | str] = {
    None: (
        "agent",
        "protocol",
        "episodes",
        "seed",
        "num_envs",
        "max_cost_usd",
        "executor",
        "ray_address",
        "video",
        "video_overlay",
        "frames",
    ),
    "env": ALL,
    "observation": ALL,
    "prompt": ALL,
    "decoding": ALL,
    "model": ALL,
}


class _ShowRecommendations(argparse.Action):
    """Print the seed's recommendation table and exit at once, like ``--help`` (no other flag needed)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # type: ignore[override]
        from atari_vlm.seed_api import render_recommendations

        render_recommendations(out)
        parser.exit(0)


def _add_show_recommendations(parser: argparse.ArgumentParser) -> None:
    """The seed's ``train_atari_vlm.py --show-recommendations``."""
    parser.add_argument(
        "--show-recommendations",
        action=_ShowRecommendations,
        nargs=0,
        dest=argparse.SUPPRESS,
        default=argparse.SUPPRESS,
        help="print the seed's VLM recommendations beside today's presets (prices, usable here now, "
        "figures from BENCHMARKS.md), then exit",
    )


def build_parser() -> argparse.ArgumentParser:
    from atari_vlm.spec import BENCH_STUCK_DECISIONS

    parser = _Parser(prog="atari-vlm", description="Vision-language models play Atari 2600 games.")
    parser.add_argument("--version", action="version", version=f"atari-vlm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    play = sub.add_parser("play", help="play episodes with a model (or a reference agent) and record them")
    play.add_argument("--game", required=True, help="any ALE game: Pong, pong, Pong-v5, ALE/Pong-v5, ...")
    play.add_argument("--out", default=None, help="run directory (default: runs/<game>-<model>-s<seed>)")
    play.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    play.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out: keep finished episodes, redo the rest",
    )
    play.add_argument("--no-report", dest="report", action="store_false", help="skip report.html")
    play.add_argument(
        "--dry-run", action="store_true", help="one measured decision, then the run's estimated cost"
    )
    add_spec_arguments(play, PLAY_SECTIONS)
    play.add_argument("--json", action="store_true", help="print the summary (or the dry run) as JSON")

    bench = sub.add_parser(
        "bench", help="every game x model x prompt on the same seeds, plus the random agent"
    )
    bench.add_argument("--out", required=True, help="the sweep's folder: one run directory per combination")
    bench.add_argument(
        "--dry-run",
        action="store_true",
        help="one measured decision per model and prompt, then every combination's projected tokens, "
        "dollars and model time (nothing is written)",
    )
    _add_output_options(bench, formats=True)
    add_spec_arguments(bench, {"sweep": ALL})
    add_spec_arguments(
        bench,
        {
            None: (
                "protocol",
                "num_envs",
                "max_cost_usd",
                "executor",
                "ray_address",
                "video",
                "video_overlay",
                "frames",
            ),
            "env": ALL,
            "observation": ALL,
            "prompt": ALL,
            "decoding": ALL,
            "model": ALL,
        },
        exclude=("model", "prompt"),
        # Sweeps are many runs: videos only when asked for; a stuck episode ends (spec.BENCH_STUCK_DECISIONS).
        defaults={"video": False, "stuck_decisions": BENCH_STUCK_DECISIONS},
    )

    train = sub.add_parser("train", help="play, remember, evaluate on held-out seeds, checkpoint; resumable")
    train.add_argument("--game", required=True, help="any ALE game: Pong, Pong-v5, ALE/Pong-v5, ...")
    train.add_argument(
        "--out", default=None, help="run directory (default: runs/train-<game>-<model>-s<seed>)"
    )
    train.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    train.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    train.add_argument(
        "--dry-run",
        action="store_true",
        help="one measured decision, then the training run's projected tokens, dollars and model time "
        "(training and evaluation episodes; nothing is written)",
    )
    train.add_argument(
        "--demo",
        action="append",
        default=[],
        metavar="PATH",
        help="recorded demonstrations to import into the memory first (repeatable): an episode folder or "
        "the game folder `atari-vlm record` writes",
    )
    add_spec_arguments(
        train,
        {
            None: ("episodes", "seed", "num_envs", "max_cost_usd"),
            "train": ALL,
            "env": ALL,
            "observation": ALL,
            "prompt": ALL,
            "decoding": ALL,
            "model": ALL,
        },
        defaults={"episodes": 10},
        aliases={"model": ("--vlm",)},
    )
    train.add_argument("--json", action="store_true", help="print the result (or the dry run) as JSON")
    _add_show_recommendations(train)

    rec = sub.add_parser("record", help="record demonstrations (RAM expert, keyboard, random) into a memory")
    rec.add_argument("--game", required=True, help="any ALE game (the expert plays the rich-state games)")
    rec.add_argument("--agent", choices=["expert", "human", "random"], default="expert")
    rec.add_argument("--episodes", type=int, default=1)
    rec.add_argument("--out", required=True, help="trajectory store directory (created if missing)")
    rec.add_argument("--seed", type=int, default=0, help="root seed of the episodes")
    rec.add_argument("--max-steps", type=int, default=None, help="decisions per episode at most")
    rec.add_argument("--scale", type=int, default=3, help="human play: window scale of the 160x210 screen")
    add_spec_arguments(rec, {"observation": ALL})

    ft = sub.add_parser("finetune", help="fine-tune a local VLM on the best recorded episodes (LoRA)")
    ft.add_argument(
        "--model", required=True, help="a local checkpoint directory, a LoRA adapter dir, or demo"
    )
    ft.add_argument(
        "--data",
        required=True,
        help="a trajectory store (atari-vlm record --out, a run's memory/) or one of its game folders",
    )
    ft.add_argument("--out", required=True, help="new directory for the adapter (plays with --model <out>)")
    ft.add_argument("--game", default=None, help="only this game's episodes (default: all in --data)")
    ft.add_argument("--full", action="store_true", help="train all weights and save a full checkpoint")
    ft.add_argument("--epochs", type=int, default=1)
    ft.add_argument("--lr", type=float, default=None, help="default: 1e-3 LoRA, 1e-4 full")
    ft.add_argument("--batch-size", type=int, default=8)
    ft.add_argument("--top-k", type=int, default=5, help="train on the best K episodes by return")
    ft.add_argument("--max-examples", type=int, default=None, help="a seeded sample of the steps at most")
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--prompt", default="basic", help="the prompt style the model will play with")
    ft.add_argument("--frame-stack", type=int, default=1)
    ft.add_argument("--device", default="cpu")

    report = sub.add_parser(
        "report", help="write report.html for a run (summary, plots, episode viewer) or a bench folder"
    )
    report.add_argument("run_dir", help="a run directory (`play`, `train`) or a `bench --out` folder")
    report.add_argument(
        "--max-frames", type=int, default=600, help="video frames embedded per episode (runs without frames/)"
    )

    results = sub.add_parser("results", help="score tables (human-normalized, bootstrap CIs) over runs")
    results.add_argument("paths", nargs="+", help="run directories, or folders holding them")
    results.add_argument("--out", required=True, help="where results.md, results.csv, results.json go")
    results.add_argument("--table", default="dqn_nature", help="reference scores: dqn_nature | atari57")
    results.add_argument("--reps", type=int, default=2000, help="bootstrap resamples")
    _add_output_options(results, formats=True)

    models = sub.add_parser(
        "models", help="model presets: prices, hardware, usable now, and a recommendation"
    )
    _add_output_options(models)

    export = sub.add_parser("export", help="trajectories as a fine-tuning folder (HF datasets) or Minari")
    export.add_argument("source", help="a run directory, or a trajectory memory game folder (memory/Pong)")
    export.add_argument("--format", choices=["hf", "minari"], default="hf")
    export.add_argument("--out", required=True, help="hf: the folder to write; minari: the datasets root")
    export.add_argument("--id", default=None, help="minari: dataset id (default: atari-vlm/<game>/<name>-v0)")
    export.add_argument("--top-k", type=int, default=None, help="only the best K episodes by return")
    export.add_argument("--min-return", type=float, default=None, help="only episodes returning at least R")

    games = sub.add_parser("games", help="list every playable game")
    games.add_argument("--rich-only", action="store_true", help="only games with a RAM state description")
    _add_output_options(games)
    for command in sub.choices.values():
        command.add_argument(
            "--verbose",
            action="store_true",
            help="let the libraries underneath print their banners and warnings (ALE, transformers, torch)",
        )
    return parser


def _add_output_options(parser: argparse.ArgumentParser, *, formats: bool = False) -> None:
    """How a command's table reaches the terminal: fitted to its width, all columns, or data."""
    parser.add_argument("--json", action="store_true", help="print JSON for scripts instead of tables")
    parser.add_argument("--wide", action="store_true", help="every column, however wide the lines get")
    if formats:
        parser.add_argument(
            "--format",
            choices=["table", "md"],
            default="table",
            help="table: fitted to the terminal; md: the Markdown of results.md",
        )


def _run_spec(game: str, args: argparse.Namespace, **extra: object):
    """The run spec of a command line: its settings, with the protocol it names applied."""
    from atari_vlm.bench.protocols import with_protocol
    from atari_vlm.spec import RunSpec

    settings = with_protocol(given_settings(args), set(given_settings(args, with_defaults=False)))
    _check_executor_args(settings)
    return RunSpec.build(game=game, **settings, **extra)


def _cmd_bench(args: argparse.Namespace) -> int:
    from atari_vlm.bench.sweep import BenchSpec, SweepCallbacks, estimate_bench, run_bench
    from atari_vlm.runner import decisions_bound
    from atari_vlm.spec import SweepSpec

    settings = given_settings(args)
    sweep_names = {name for name, *_ in SweepSpec.settings()}
    sweep = SweepSpec(**{k: v for k, v in settings.items() if k in sweep_names})
    run_settings = {k: v for k, v in settings.items() if k not in sweep_names}
    _check_executor_args(run_settings)
    given = set(given_settings(args, with_defaults=False)) - sweep_names
    spec = BenchSpec(out=Path(args.out), sweep=sweep, settings=run_settings, given=frozenset(given))
    if args.dry_run:
        return _print_bench_estimate(estimate_bench(spec), args)

    progress = DecisionProgress(err, "sweep")
    spent = [0.0, False]  # dollars so far, whether any call had a price

    def on_plan(pending) -> None:
        bounds = {id(c): decisions_bound(c.spec)[0] for c in pending}
        progress.start(sum(bounds[id(c)] * c.spec.episodes for c in pending))
        progress.describe(f"sweep of {len(pending)} run(s)")

    def on_episode(combo, result) -> None:
        progress.episode_ended(decisions_bound(combo.spec)[0], result.steps)
        if result.cost_usd is not None:
            spent[0] += result.cost_usd
            spent[1] = True
            progress.cost(spent[0])

    def on_combination(combo, summary) -> None:
        if summary is None:
            progress.print(f"[dim]done already:[/dim] {escape(combo.label)}")
            return
        data = summary.to_dict()
        cost = "" if data["cost_usd"] is None else f", {usd(data['cost_usd'])}"
        progress.print(
            f"{escape(combo.label)}: mean return {num(data['mean_return'])} over {data['episodes']} "
            f"episode(s){cost}"
        )
        if summary.stopped:
            progress.print(
                f"[bold yellow]stopped early:[/bold yellow] {escape(summary.stopped)} "
                "(the sweep stops here; run the same bench again to go on)"
            )

    callbacks = SweepCallbacks(on_plan, progress.advance, on_episode, on_combination)
    try:
        data = run_bench(spec, callbacks=callbacks)
    finally:
        progress.stop()
    _print_results(data, args)
    if not args.json:
        total = usd(spent[0]) if spent[1] else "no priced calls"
        out.print(f"spent by this sweep: {total}", soft_wrap=True)
        if data.get("report"):
            out.print(f"report: {data['report']}", soft_wrap=True)
    return 0


def _print_bench_estimate(estimate: dict, args: argparse.Namespace) -> int:
    if args.json:
        print_json(estimate)
        return 0
    from atari_vlm.terminal import Column, render_table

    columns = [
        Column("combination", 0, wrap=True, min_width=24),
        Column("decisions", 0, "right"),
        Column("tokens in", 2, "right"),
        Column("tokens out", 3, "right"),
        Column("dollars", 0, "right"),
        Column("model time", 1, "right"),
    ]
    rows = [
        [
            r["label"],
            f"{'<=' if r['decisions_bound'] == 'at most' else ''}{r['decisions']:,}",
            f"{r['projected_input_tokens']:,}",
            f"{r['projected_output_tokens']:,}",
            usd(r["estimated_cost_usd"]),
            _duration(r["projected_model_time_s"]) if r["agent"] == "vlm" else "-",
        ]
        for r in estimate["combinations"]
    ]
    t = estimate["totals"]
    at_most = any(r["decisions_bound"] == "at most" for r in estimate["combinations"])
    rows.append(
        [
            "total",
            f"{'<=' if at_most else ''}{t['decisions']:,}",
            f"{t['projected_input_tokens']:,}",
            f"{t['projected_output_tokens']:,}",
            usd(t["estimated_cost_usd"]),
            _duration(t["projected_model_time_s"]),
        ]
    )
    render_table(out, columns, rows, title="bench --dry-run: projected (nothing was written)", wide=args.wide)
    notes = [f"{estimate['measured_decisions']} measured decision(s), one per model, prompt and observation"]
    if estimate["done_already"]:
        notes.append(f"{estimate['done_already']} combination(s) done already, not counted")
    if t["estimated_cost_usd"] is None:
        notes.append(
            "a model has no known price: the dollars are unknown "
            f"(the priced ones: {usd(t['priced_cost_usd'])})"
        )
    if any(r.get("tokens_estimated") for r in estimate["combinations"]):
        notes.append("a server reported no token counts: its tokens are estimated from the request")
    notes.append(
        "<= : at most (a game over ends an episode sooner); "
        "model time: the decisions' latency, games at once in parallel"
    )
    for note in notes:
        out.print(escape(note))
    return 0


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{num(seconds, 1)} s"
    if seconds < 5400:
        return f"{num(seconds / 60, 1)} min"
    return f"{num(seconds / 3600, 1)} h"


def _cmd_games(args: argparse.Namespace) -> int:
    from atari_vlm.games import all_games
    from atari_vlm.state_text import RICH_GAMES
    from atari_vlm.terminal import Column, render_table

    names = [n for n in all_games() if not args.rich_only or n in RICH_GAMES]
    if args.json:
        print_json([{"game": n, "env_id": f"ALE/{n}-v5", "rich_state_text": n in RICH_GAMES} for n in names])
        return 0
    rows = [[n, f"ALE/{n}-v5", "* rich" if n in RICH_GAMES else "generic"] for n in names]
    title = f"{len(names)} playable games (* = rich state text from RAM)"
    render_table(
        out, [Column("game"), Column("env id", 1), Column("state text", 2)], rows, title=title, wide=args.wide
    )
    return 0


def _cmd_play(args: argparse.Namespace) -> int:
    from atari_vlm.runner import decisions_bound, run_play

    spec = _run_spec(args.game, args)
    label = spec.agent if spec.agent != "vlm" else spec.model.model
    safe_label = "".join(c if c.isalnum() or c in "-_." else "-" for c in label.split("/")[-1])
    out_dir = args.out or os.path.join("runs", f"{spec.game}-{safe_label}-s{spec.seed}")
    if args.dry_run:
        return _dry_run(spec, as_json=args.json)
    executor = None
    if spec.executor == "ray":
        from atari_vlm.executors import RayExecutor

        executor = RayExecutor(spec.ray_address)
    progress = DecisionProgress(err, spec.game)
    bound = decisions_bound(spec)[0]
    spent = [0.0]

    def on_start(model, total) -> None:
        if model is not None and model.warning:
            err.print(f"[bold yellow]WARNING:[/bold yellow] {escape(model.warning)}")
        progress.describe(f"{spec.game} x {model.spec if model else spec.agent}")
        progress.start(total)

    def on_episode(result) -> None:
        progress.episode_ended(bound, result.steps)
        if result.cost_usd is not None:
            spent[0] += result.cost_usd
            progress.cost(spent[0])

    try:
        summary = run_play(
            spec,
            out_dir,
            overwrite=args.overwrite,
            resume=args.resume,
            on_start=on_start,
            on_step=progress.advance,
            on_episode=on_episode,
            executor=executor,
        )
    finally:
        progress.stop()
    if args.json:
        print_json(summary.to_dict())
    else:
        _print_summary(summary)
    if args.report:
        _write_report_if_possible(summary.out, quiet=args.json)
    return 0


def _write_report_if_possible(run_dir: Path, *, quiet: bool = False) -> None:
    """A report at the end of every run, when the report extra is installed; a hint when it is not.
    ``quiet``: stdout holds JSON, so the report's path goes to stderr."""
    from atari_vlm.errors import DependencyNotInstalled
    from atari_vlm.report import write_report

    try:
        (err if quiet else out).print(f"report: {write_report(run_dir)}", soft_wrap=True)
    except DependencyNotInstalled as exc:
        err.print(f"[yellow]no report:[/yellow] {escape(str(exc))}")


def _dry_run(spec, *, decisions: int | None = None, what: str = "run", as_json: bool = False) -> int:
    from atari_vlm.runner import measure_decision, project

    est = project(spec, measure_decision(spec), decisions=decisions)
    if as_json:
        print_json(est)
        return 0
    estimated = " (estimated: the server reported none)" if est["tokens_estimated"] else ""
    out.print(
        f"one measured decision of {escape(est['model']['spec'])}: {est['input_tokens']:,} input + "
        f"{est['output_tokens']:,} output tokens{estimated}, {num(est['latency_s'], 2)} s"
    )
    per = est["cost_per_decision_usd"]
    price = (
        f"{usd(per)} per decision"
        if per is not None
        else "no price is known for this model (a custom server?)"
    )
    out.print(
        f"the {what}: {est['decisions_bound']} {est['decisions']:,} decisions, "
        f"{est['projected_input_tokens']:,} input + {est['projected_output_tokens']:,} output tokens, "
        f"{_duration(est['projected_model_time_s'])} of model time ({est['parallel']} at once); "
        f"{price}: {usd(est['estimated_cost_usd'])} in all (nothing was written)"
    )
    return 0


def _print_summary(summary) -> None:
    data = summary.to_dict()
    table = Table(title=f"{escape(data['game'])} played by {escape(data['model']['spec'])}")
    for col in ("episode", "return", "steps", "calls", "unparsed", "tok in", "tok out", "wall s"):
        table.add_column(col, justify="right", no_wrap=True)
    for e in summary.episodes:
        table.add_row(
            str(e.episode),
            num(e.episode_return),
            str(e.steps),
            str(e.decisions),
            str(e.unparsed),
            f"{e.usage.input_tokens:,}",
            f"{e.usage.output_tokens:,}",
            f"{e.wall_s:.1f}",
        )
    out.print(table)
    if data["cost_usd"] is not None:
        out.print(f"cost: {usd(data['cost_usd'])}")
    if summary.stopped:
        out.print(f"[bold yellow]stopped early:[/bold yellow] {escape(summary.stopped)} (--resume continues)")
    out.print(
        f"mean return {num(data['mean_return'])} over {data['episodes']} episode(s); "
        f"{data['decisions']} model decisions, {data['unparsed']} unparsable answers, "
        f"{data['input_tokens']:,} + {data['output_tokens']:,} tokens, {data['wall_s']:.1f} s wall time"
    )
    if data["constraint_ignored"]:
        out.print(
            f"[bold yellow]NOTE:[/bold yellow] {data['constraint_ignored']} constrained answer(s) named no "
            "legal action: the server ignored the constraint (the fallback was played)"
        )
    if data["constraint_note"]:
        out.print(f"[bold yellow]NOTE:[/bold yellow] {escape(data['constraint_note'])}")
    if summary.warning:
        out.print(f"[bold yellow]NOTE:[/bold yellow] {escape(summary.warning)}")
    out.print(f"run directory: {escape(str(summary.out))}", soft_wrap=True)


def _cmd_train(args: argparse.Namespace) -> int:
    from atari_vlm.training import VLMTrainer

    extra: dict[str, object] = {"train": True, "demos": tuple(args.demo)}
    if getattr(args, "model", None) == "random":  # `--vlm random`: the baseline agent, as the seed wrote it
        del args.model
        extra["agent"] = "random"
    spec = _run_spec(args.game, args, **extra)
    trainer = VLMTrainer.from_spec(spec, out_dir=args.out, overwrite=args.overwrite)
    if args.dry_run:
        decisions = trainer.model_decisions(spec.episodes)
        what = "training run (training and evaluation episodes)"
        return _dry_run(spec, decisions=decisions, what=what, as_json=args.json)
    progress = DecisionProgress(err, f"training on {spec.game}", unit="training episodes")

    def on_episode(result) -> None:
        progress.advance(1)

    def on_evaluation(row: dict) -> None:
        progress.print(
            f"after {row['episode']} episode(s): "
            f"eval {num(row['eval_mean_return'])} ± {num(row['eval_std'])} "
            f"(random {num(row['random_mean_return'])}), {row['n_exemplars']} exemplar image(s)",
            soft_wrap=True,
        )

    progress.start(spec.episodes)
    try:
        result = trainer.train(
            spec.episodes, resume=args.resume, on_episode=on_episode, on_evaluation=on_evaluation
        )
        progress.set_completed(len(result.episodes))  # a resumed run's earlier episodes count too
    finally:
        progress.stop()
    if args.json:
        print_json(result.to_dict())
        return 0
    out.print(
        f"learning curve: {result.out_dir / 'learning_curve.csv'}; memory: {trainer.store.root}",
        soft_wrap=True,
    )
    if result.stopped:
        out.print(f"[bold yellow]stopped early:[/bold yellow] {escape(result.stopped)} (--resume continues)")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from atari_vlm import export

    filters = {"top_k": args.top_k, "min_return": args.min_return}
    if args.format == "hf":
        path = export.export_hf(args.source, args.out, **filters)
    else:
        dataset_id = args.id or export.default_dataset_id(args.source)
        path = export.export_minari(args.source, dataset_id, out_dir=args.out, **filters)
    out.print(f"exported: {path}")
    return 0


def _cmd_record(args: argparse.Namespace) -> int:
    from atari_vlm.record import record

    metas = record(
        args.game,
        args.agent,
        args.episodes,
        args.out,
        seed=args.seed,
        max_steps=args.max_steps,
        env_options=given_settings(args),
        scale=args.scale,
    )
    for meta in metas:
        out.print(f"{meta.episode_id}: return {num(meta.episode_return)} in {meta.steps} steps")
    out.print(f"{len(metas)} episode(s) recorded in {Path(args.out) / metas[0].game if metas else args.out}")
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from atari_vlm.training.finetune import finetune

    progress = Progress(
        TextColumn("fine-tuning"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    shown: dict[str, int] = {}
    start, cpu_start = time.perf_counter(), time.process_time()

    def on_start(total: int, examples: int) -> None:
        err.print(f"{examples} examples, {total} optimizer steps")
        shown["task"], shown["total"] = progress.add_task("", total=total, loss="-"), total
        if err.is_terminal:  # a live bar; elsewhere (logs, pipes) one line per tenth of the steps
            progress.start()

    def on_step(step: int, loss: float) -> None:
        total = shown["total"]
        progress.update(shown["task"], completed=step, loss=f"{loss:.4f}")
        if not err.is_terminal and (step % max(1, total // 10) == 0 or step == total):
            err.print(f"step {step}/{total}: loss {loss:.4f} ({time.perf_counter() - start:.1f} s)")

    try:
        result = finetune(
            args.model,
            args.data,
            args.out,
            lora=not args.full,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            top_k=args.top_k,
            seed=args.seed,
            game=args.game,
            prompt_style=args.prompt,
            frame_stack=args.frame_stack,
            max_examples=args.max_examples,
            device=args.device,
            on_start=on_start,
            on_step=on_step,
        )
    finally:
        if progress.live.is_started:
            progress.stop()
    out.print(
        f"{result.steps} steps on {result.examples} examples from {len(result.episodes)} episode(s); "
        f"loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}; {time.perf_counter() - start:.1f} s wall "
        f"({result.train_s:.1f} s of training steps), {time.process_time() - cpu_start:.1f} s CPU",
        soft_wrap=True,  # one line, whatever the terminal's width
    )
    out.print(f"play it: atari-vlm play --model {result.out_dir} ...")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from atari_vlm.models.table import models_data, render_models_table

    if args.json:
        print_json(models_data())
    else:
        render_models_table(out, wide=args.wide)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from atari_vlm.report import write_report

    if not (Path(args.run_dir) / "config.json").is_file() and Path(args.run_dir).is_dir():
        from atari_vlm.bench.sweep import write_bench_report

        out.print(f"report: {write_bench_report(args.run_dir)}")  # a bench folder: its runs' report
        return 0
    path = write_report(args.run_dir, max_frames_per_episode=args.max_frames)
    out.print(f"report: {path}")
    return 0


def _cmd_results(args: argparse.Namespace) -> int:
    from atari_vlm.bench import write_results

    _print_results(write_results(args.paths, args.out, table=args.table, reps=args.reps), args)
    return 0


def _print_results(data: dict, args: argparse.Namespace) -> None:
    """Results as the command asked: tables fitted to the terminal, Markdown, or JSON."""
    from atari_vlm.bench.results import markdown, render_results

    if args.json:
        print_json(data)
        return
    if args.format == "md":
        sys.stdout.write(markdown(data))
    else:
        render_results(out, data, wide=args.wide)
    out.print(f"written: {', '.join(str(f) for f in data['files'].values())}", soft_wrap=True)


COMMANDS = {
    "play": _cmd_play,
    "bench": _cmd_bench,
    "train": _cmd_train,
    "record": _cmd_record,
    "finetune": _cmd_finetune,
    "games": _cmd_games,
    "models": _cmd_models,
    "export": _cmd_export,
    "report": _cmd_report,
    "results": _cmd_results,
}


NO_GAMES = frozenset({"models", "results", "report", "export"})
"""Commands that play no game: ale_py (and its banner) is never imported for them."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code (0 ok, 1 failed during the run, 2 bad input).

    A bare ``atari-vlm`` prints the help and exits 0.
    """
    global err, out
    err, out = make_console(stderr=True), make_console()
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if not argv:
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    quiet_libraries(args.verbose, ale=args.command not in NO_GAMES)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        error_line(err, "error", str(exc))
        return 2
    except ModelError as exc:
        error_line(err, "model error", str(exc))
        return 1
    except DiskFull as exc:
        error_line(err, "error", str(exc))
        return 1
    except KeyboardInterrupt as exc:  # SIGINT, or SIGTERM (Terminated): the run wrote what it had
        with _signals_ignored():  # one more Ctrl-C must not cut this message short with a traceback
            error_line(err, "interrupted", str(exc) or "stopped")
        return 143 if isinstance(exc, Terminated) else 130


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    sys.exit(main())
