"""``atari-vlm``: the command line. Thin: it parses arguments and calls the library.

Exit codes: 0 success, 2 bad input (the message says what was wrong and what would be right),
1 a failure during the run (a model that stopped answering, say).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from atari_vlm import __version__
from atari_vlm.errors import ConfigError, ModelError

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)


def _shape(text: str) -> tuple[int, int]:
    """Parse "84x84" or "84,84" as (height, width)."""
    parts = text.lower().replace(",", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 105x80, got {text!r}")
    return int(parts[0]), int(parts[1])


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        err.print(f"[red]error:[/red] {escape(message)}  (see `{self.prog} --help`)")
        raise SystemExit(2)


def _add_view_args(parser: argparse.ArgumentParser) -> None:
    """How frames are shown to the model (shared by play and bench: protocols leave these open)."""
    g = parser.add_argument_group("what the model sees")
    g.add_argument("--resize", type=_shape, default=None, metavar="HxW", help="frame size the model sees")
    g.add_argument("--grayscale", action="store_true")
    g.add_argument("--frame-stack", type=int, default=1)
    g.add_argument("--frame-layout", choices=["grid", "sequence"], default="grid")


def _add_executor_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="local: this process; ray: episodes spread over Ray workers, each loading its own model "
        '(pip install "atari-vlm[ray]")',
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster to join (auto, ray://host:10001); default: start a local Ray instance",
    )


def _check_executor_args(args: argparse.Namespace) -> None:
    if args.ray_address is not None and args.executor != "ray":
        raise ConfigError("--ray-address needs --executor ray")


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    m = parser.add_argument_group("model")
    m.add_argument("--base-url", default=None, help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    m.add_argument(
        "--api-key",
        default=None,
        help="else OPENAI_API_KEY / ANTHROPIC_API_KEY / GEMINI_API_KEY / GOOGLE_API_KEY; never written",
    )
    m.add_argument(
        "--image-detail", choices=["auto", "low", "high"], default="auto", help="OpenAI image detail"
    )
    m.add_argument(
        "--trust-remote-code", action="store_true", help="local models: run a checkpoint's own code"
    )
    m.add_argument(
        "--max-cost", type=float, default=None, metavar="USD", help="stop before a call could pass this"
    )
    m.add_argument("--max-tokens", type=int, default=None, help="default: the prompt style's own")
    m.add_argument("--temperature", type=float, default=0.0)
    m.add_argument("--device", default="cpu", help="local models: cpu, cuda, cuda:1, mps")
    m.add_argument("--dtype", default="auto", help="local models: auto, float32, bfloat16, float16")
    m.add_argument("--quantize", choices=["4bit", "8bit"], default=None, help="local models: bitsandbytes")
    m.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="API requests in flight at most (default: --num-envs for a --base-url server, else up to 8)",
    )
    m.add_argument("--num-envs", type=int, default=1, help="games played concurrently")


def add_train_parser(sub) -> None:
    train = sub.add_parser("train", help="play, remember, evaluate on held-out seeds, checkpoint; resumable")
    train.add_argument("--game", required=True, help="any ALE game: Pong, Pong-v5, ALE/Pong-v5, ...")
    train.add_argument(
        "--vlm",
        "--model",
        dest="model",
        default="auto",
        help="a preset (see `atari-vlm models`) | demo | auto | openai:|anthropic:|gemini:<model> | "
        "local:<hf id> | <checkpoint dir> | random (the baseline agent)",
    )
    train.add_argument("--prompt", default="basic", help="basic | cot | expert | a template .txt file")
    train.add_argument(
        "--use-icl", action="store_true", help="show exemplars from the memory (in-context learning)"
    )
    train.add_argument("--exemplars", choices=["key_moments", "similar"], default="key_moments")
    train.add_argument("--top-k", type=int, default=3, help="exemplars come from the best K episodes")
    train.add_argument("--image-budget", type=int, default=8, help="exemplar images per request at most")
    train.add_argument(
        "--episodes", type=int, default=10, help="training episodes in all (a resume counts those done)"
    )
    train.add_argument("--eval-every", type=int, default=5, help="evaluate after every N training episodes")
    train.add_argument(
        "--eval-episodes", type=int, default=3, help="held-out evaluation seeds 10000, 10001, ..."
    )
    train.add_argument("--max-steps", type=int, default=None, help="decisions per episode at most")
    train.add_argument("--seed", type=int, default=0, help="root seed of the training episodes")
    train.add_argument("--frame-skip", type=int, default=4)
    train.add_argument(
        "--demo",
        action="append",
        default=[],
        metavar="PATH",
        help="a recorded episode to import into the memory first (repeatable)",
    )
    train.add_argument(
        "--out", default=None, help="run directory (default: runs/train-<game>-<model>-s<seed>)"
    )
    train.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    train.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    train.add_argument(
        "--finetune-every",
        type=int,
        default=None,
        metavar="K",
        help="expert iteration: every K episodes fine-tune the (local) model on the best --top-k episodes",
    )
    train.add_argument("--finetune-full", action="store_true", help="full fine-tuning instead of LoRA")
    train.add_argument("--finetune-epochs", type=int, default=1)
    train.add_argument("--finetune-lr", type=float, default=None, help="default: 1e-3 LoRA, 1e-4 full")
    _add_view_args(train)
    _add_model_args(train)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="atari-vlm", description="Vision-language models play Atari 2600 games.")
    parser.add_argument("--version", action="version", version=f"atari-vlm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    play = sub.add_parser("play", help="play episodes with a model (or the random agent) and record them")
    play.add_argument("--game", required=True, help="any ALE game: Pong, pong, Pong-v5, ALE/Pong-v5, ...")
    play.add_argument(
        "--model",
        default="auto",
        help="a preset (see `atari-vlm models`) | demo | auto | openai:|anthropic:|gemini:<model> | "
        "local:<hf id> | <checkpoint dir> (default: auto = an API key or server if set, else demo)",
    )
    play.add_argument("--agent", default="vlm", choices=["vlm", "random"], help="random: the baseline")
    play.add_argument("--episodes", type=int, default=1)
    play.add_argument("--max-steps", type=int, default=None, help="decisions per episode at most")
    play.add_argument("--seed", type=int, default=0, help="root seed of the whole run")
    play.add_argument("--out", default=None, help="run directory (default: runs/<game>-<model>-s<seed>)")
    play.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    play.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out: keep finished episodes, redo the rest",
    )
    play.add_argument("--no-video", dest="video", action="store_false", help="skip the mp4 per episode")
    play.add_argument("--video-overlay", action="store_true", help="caption each video frame with the action")
    play.add_argument("--no-report", dest="report", action="store_false", help="skip report.html")
    _add_executor_args(play)
    play.add_argument(
        "--dry-run", action="store_true", help="one measured decision, then the run's estimated cost"
    )
    _add_view_args(play)
    g = play.add_argument_group("environment")
    g.add_argument("--frame-skip", type=int, default=4)
    g.add_argument("--sticky", type=float, default=0.25, help="repeat_action_probability (ALE v5: 0.25)")
    g.add_argument("--full-action-space", action="store_true")
    p = play.add_argument_group("prompt")
    p.add_argument(
        "--prompt", "--prompt-file", default="basic", help="basic | cot | expert | a template .txt file"
    )
    p.add_argument("--answer-format", choices=["line", "json"], default="line", help="ACTION: line or JSON")
    p.add_argument("--history-steps", type=int, default=0, help="past decisions recalled in text")
    p.add_argument("--history-images", type=int, default=0, help="past frames shown again")
    _add_model_args(play)

    bench = sub.add_parser(
        "bench", help="every game x model x prompt on the same seeds, plus the random agent"
    )
    bench.add_argument("--games", default="", help="comma-separated (default: the protocol's games)")
    bench.add_argument("--models", required=True, help="comma-separated --model values")
    bench.add_argument("--prompts", default="basic", help="comma-separated prompt styles or template files")
    bench.add_argument("--seeds", default=None, help="e.g. 0-4 or 1,5,9 (default: the protocol's runs)")
    bench.add_argument("--protocol", default=None, help="atari-gpt | machado | a JSON/TOML protocol file")
    bench.add_argument("--max-steps", type=int, default=None, help="cap decisions (quick looks; flagged)")
    bench.add_argument("--out", required=True, help="the sweep's folder: one run directory per combination")
    bench.add_argument("--video", action="store_true", help="record videos (off by default in sweeps)")
    _add_executor_args(bench)
    _add_view_args(bench)
    _add_model_args(bench)

    add_train_parser(sub)

    rec = sub.add_parser("record", help="record demonstrations (RAM expert, keyboard, random) into a memory")
    rec.add_argument("--game", required=True, help="any ALE game (the expert plays Pong and Breakout)")
    rec.add_argument("--agent", choices=["expert", "human", "random"], default="expert")
    rec.add_argument("--episodes", type=int, default=1)
    rec.add_argument("--out", required=True, help="trajectory store directory (created if missing)")
    rec.add_argument("--seed", type=int, default=0, help="root seed of the episodes")
    rec.add_argument("--max-steps", type=int, default=None, help="decisions per episode at most")
    rec.add_argument("--scale", type=int, default=3, help="human play: window scale of the 160x210 screen")
    _add_view_args(rec)

    ft = sub.add_parser("finetune", help="fine-tune a local VLM on the best recorded episodes (LoRA)")
    ft.add_argument("--model", required=True, help="a local checkpoint directory (or a LoRA adapter dir)")
    ft.add_argument(
        "--data", required=True, help="a trajectory store (atari-vlm record --out, a run's memory/)"
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

    report = sub.add_parser("report", help="write report.html (summary, plots, episode viewer) for a run")
    report.add_argument("run_dir", help="a run directory written by `atari-vlm play`")
    report.add_argument("--max-frames", type=int, default=600, help="frames embedded per episode at most")

    results = sub.add_parser("results", help="score tables (human-normalized, bootstrap CIs) over runs")
    results.add_argument("paths", nargs="+", help="run directories, or folders holding them")
    results.add_argument("--out", required=True, help="where results.md, results.csv, results.json go")
    results.add_argument("--table", default="dqn_nature", help="reference scores: dqn_nature | atari57")
    results.add_argument("--reps", type=int, default=2000, help="bootstrap resamples")

    sub.add_parser("models", help="model presets: prices, hardware, usable now, and a recommendation")

    export = sub.add_parser("export", help="trajectories as a fine-tuning folder (HF datasets) or Minari")
    export.add_argument("source", help="a run directory, or a trajectory memory game folder (memory/Pong)")
    export.add_argument("--format", choices=["hf", "minari"], default="hf")
    export.add_argument("--out", required=True, help="hf: the folder to write; minari: the datasets root")
    export.add_argument("--id", default=None, help="minari: dataset id (default: atari-vlm/<game>/<name>-v0)")
    export.add_argument("--top-k", type=int, default=None, help="only the best K episodes by return")
    export.add_argument("--min-return", type=float, default=None, help="only episodes returning at least R")

    games = sub.add_parser("games", help="list every playable game")
    games.add_argument("--rich-only", action="store_true", help="only games with a RAM state description")
    return parser


def _view_options(args: argparse.Namespace) -> dict:
    return {
        "resize_shape": args.resize,
        "grayscale": args.grayscale,
        "frame_stack": args.frame_stack,
        "frame_layout": args.frame_layout,
    }


HOSTED_API_CONCURRENCY = 8
"""Default bound on requests in flight to a hosted API: well inside common rate limits (a 429 slows
every game down together anyway); a server of one's own gets one slot per game."""


def _concurrency(args: argparse.Namespace) -> int:
    if args.concurrency is not None:
        return args.concurrency
    games = max(1, args.num_envs)
    return games if args.base_url else min(games, HOSTED_API_CONCURRENCY)


def _model_options(args: argparse.Namespace):
    from atari_vlm.models.registry import ModelOptions

    return ModelOptions(
        base_url=args.base_url,
        api_key=args.api_key,
        device=args.device,
        dtype=args.dtype,
        quantize=args.quantize,
        concurrency=_concurrency(args),
        image_detail=args.image_detail,
        trust_remote_code=args.trust_remote_code,
    )


def _cmd_bench(args: argparse.Namespace) -> int:
    from atari_vlm.bench.sweep import BenchSpec, parse_seeds, run_bench

    split = lambda text: tuple(t.strip() for t in text.split(",") if t.strip())  # noqa: E731
    spec = BenchSpec(
        out=Path(args.out),
        games=split(args.games),
        models=split(args.models),
        prompts=split(args.prompts) or ("basic",),
        seeds=parse_seeds(args.seeds) if args.seeds else None,
        protocol=args.protocol,
        max_steps=args.max_steps,
        env=_view_options(args),
        model_options=_model_options(args),
        num_envs=args.num_envs,
        video=args.video,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        max_cost_usd=args.max_cost,
        executor=args.executor,
        ray_address=args.ray_address,
    )
    _check_executor_args(args)

    def on_combination(combo, summary) -> None:
        label = f"{combo.game} x {combo.model} x {combo.prompt}"
        if summary is None:
            err.print(f"[dim]done already:[/dim] {escape(label)}")
            return
        data = summary.to_dict()
        out.print(
            f"{escape(label)}: mean return {_num(data['mean_return'])} over {data['episodes']} episodes"
        )
        if summary.stopped:
            out.print(
                f"[bold yellow]stopped early:[/bold yellow] {escape(summary.stopped)} "
                "(the sweep stops here; run the same bench again to go on)"
            )

    data = run_bench(spec, on_combination=on_combination)
    sys.stdout.write(Path(data["files"]["markdown"]).read_text(encoding="utf-8"))
    out.print(f"written: {', '.join(str(f) for f in data['files'].values())}")
    return 0


def _cmd_games(args: argparse.Namespace) -> int:
    from atari_vlm.games import all_games
    from atari_vlm.state_text import RICH_GAMES

    names = [n for n in all_games() if not args.rich_only or n in RICH_GAMES]
    table = Table(title=f"{len(names)} playable games (* = rich state text from RAM)")
    table.add_column("game")
    table.add_column("env id")
    table.add_column("state text")
    for name in names:
        table.add_row(name, f"ALE/{name}-v5", "* rich" if name in RICH_GAMES else "generic")
    out.print(table)
    return 0


def _cmd_play(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from atari_vlm.runner import PlaySettings, run_play

    model_label = "random" if args.agent == "random" else args.model
    safe_label = "".join(c if c.isalnum() or c in "-_." else "-" for c in model_label.split("/")[-1])
    out_dir = args.out or os.path.join("runs", f"{args.game.split('/')[-1]}-{safe_label}-s{args.seed}")
    env_options = {
        **_view_options(args),
        "frame_skip": args.frame_skip,
        "repeat_action_probability": args.sticky,
        "max_steps": args.max_steps,
        "full_action_space": args.full_action_space,
    }
    settings = PlaySettings(
        game=args.game,
        out=out_dir,
        model=args.model,
        agent=args.agent,
        episodes=args.episodes,
        seed=args.seed,
        num_envs=args.num_envs,
        env=env_options,
        prompt=args.prompt,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        answer_format=args.answer_format,
        history_steps=args.history_steps,
        history_images=args.history_images,
        video=args.video,
        video_overlay=args.video_overlay,
        max_cost_usd=args.max_cost,
        overwrite=args.overwrite,
        resume=args.resume,
        model_options=_model_options(args),
    )
    _check_executor_args(args)
    if args.dry_run:
        return _dry_run(settings)
    executor = None
    if args.executor == "ray":
        from atari_vlm.executors import RayExecutor

        executor = RayExecutor(args.ray_address)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("decisions"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )
    task_id = None

    def on_start(model, total) -> None:
        nonlocal task_id
        if model is not None and model.warning:
            err.print(f"[bold yellow]WARNING:[/bold yellow] {escape(model.warning)}")
        progress.start()
        task_id = progress.add_task(f"{settings.game} x {model.spec if model else 'random'}", total=total)

    def on_step(n: int) -> None:
        progress.advance(task_id, n)

    try:
        summary = run_play(settings, on_start=on_start, on_step=on_step, executor=executor)
    finally:
        progress.stop()
    _print_summary(summary)
    if args.report:
        _write_report_if_possible(summary.out)
    return 0


def _write_report_if_possible(run_dir: Path) -> None:
    """A report at the end of every run, when the report extra is installed; a hint when it is not."""
    from atari_vlm.errors import DependencyNotInstalled
    from atari_vlm.report import write_report

    try:
        out.print(f"report: {write_report(run_dir)}")
    except DependencyNotInstalled as exc:
        err.print(f"[yellow]no report:[/yellow] {escape(str(exc))}")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _dry_run(settings) -> int:
    from atari_vlm.runner import estimate_cost

    est = estimate_cost(settings)
    per = est["cost_per_decision_usd"]
    out.print(
        f"one measured decision of {est['model']['spec']}: {est['input_tokens']} input + "
        f"{est['output_tokens']} output tokens, {est['latency_s']} s"
    )
    if per is None:
        out.print("no price is known for this model (a custom server?), so no dollar estimate")
    else:
        out.print(
            f"${per:.6f} per decision x {est['decisions_bound']} {est['decisions']} decisions "
            f"= about ${est['estimated_cost_usd']:.4f} for the run (nothing was written)"
        )
    return 0


def _print_summary(summary) -> None:
    data = summary.to_dict()
    table = Table(title=f"{data['game']} played by {data['model']['spec']}")
    for col in ("episode", "return", "steps", "calls", "unparsed", "tok in", "tok out", "wall s"):
        table.add_column(col, justify="right")
    for e in summary.episodes:
        table.add_row(
            str(e.episode),
            f"{e.episode_return:g}",
            str(e.steps),
            str(e.decisions),
            str(e.unparsed),
            str(e.usage.input_tokens),
            str(e.usage.output_tokens),
            f"{e.wall_s:.1f}",
        )
    out.print(table)
    if data["cost_usd"] is not None:
        out.print(f"cost: ${data['cost_usd']:.4f}")
    if summary.stopped:
        out.print(f"[bold yellow]stopped early:[/bold yellow] {escape(summary.stopped)} (--resume continues)")
    out.print(
        f"mean return {_num(data['mean_return'])} over {data['episodes']} episode(s); "
        f"{data['decisions']} model decisions, {data['unparsed']} unparsable answers, "
        f"{data['input_tokens']} + {data['output_tokens']} tokens, {data['wall_s']:.1f} s wall time"
    )
    if summary.warning:
        out.print(f"[bold yellow]NOTE:[/bold yellow] {escape(summary.warning)}")
    out.print(f"run directory: {summary.out}")


def _cmd_train(args: argparse.Namespace) -> int:
    from atari_vlm.training import VLMTrainer

    trainer = VLMTrainer(
        args.game,
        args.model,
        args.prompt,
        args.use_icl,
        out_dir=args.out,
        eval_every=args.eval_every,
        eval_episodes=args.eval_episodes,
        max_steps=args.max_steps,
        seed=args.seed,
        num_envs=args.num_envs,
        top_k_episodes=args.top_k,
        image_budget=args.image_budget,
        exemplar_strategy=args.exemplars,
        env_options={**_view_options(args), "frame_skip": args.frame_skip},
        model_options=_model_options(args),
        max_tokens=args.max_tokens,
        agent_options={"temperature": args.temperature},
        demonstrations=args.demo,
        overwrite=args.overwrite,
        finetune_every=args.finetune_every,
        finetune_options={
            "lora": not args.finetune_full,
            "epochs": args.finetune_epochs,
            "lr": args.finetune_lr,
        },
        max_cost_usd=args.max_cost,
    )

    def on_evaluation(row: dict) -> None:
        err.print(
            f"after {row['episode']} episode(s): eval {row['eval_mean_return']:g} ± {row['eval_std']:g} "
            f"(random {row['random_mean_return']:g}), {row['n_exemplars']} exemplar image(s)"
        )

    result = trainer.train(args.episodes, resume=args.resume, on_evaluation=on_evaluation)
    out.print(f"learning curve: {result.out_dir / 'learning_curve.csv'}; memory: {trainer.store.root}")
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
        env_options=_view_options(args),
        scale=args.scale,
    )
    for meta in metas:
        out.print(f"{meta.episode_id}: return {meta.episode_return:g} in {meta.steps} steps")
    out.print(f"{len(metas)} episode(s) recorded in {Path(args.out) / metas[0].game if metas else args.out}")
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from atari_vlm.training.finetune import finetune

    def on_step(step: int, loss: float) -> None:
        if step % 10 == 0:
            err.print(f"step {step}: loss {loss:.4f}")

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
        on_step=on_step,
    )
    out.print(
        f"{result.steps} steps on {result.examples} examples from {len(result.episodes)} episode(s) in "
        f"{result.wall_s:.0f} s; loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}"
    )
    out.print(f"play it: atari-vlm play --model {result.out_dir} ...")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from atari_vlm.models.table import render_models_table

    render_models_table(out)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from atari_vlm.report import write_report

    path = write_report(args.run_dir, max_frames_per_episode=args.max_frames)
    out.print(f"report: {path}")
    return 0


def _cmd_results(args: argparse.Namespace) -> int:
    from atari_vlm.bench import write_results

    data = write_results(args.paths, args.out, table=args.table, reps=args.reps)
    sys.stdout.write((Path(args.out) / "results.md").read_text(encoding="utf-8"))  # markdown, unwrapped
    out.print(f"written: {', '.join(str(f) for f in data['files'].values())}")
    return 0


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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        return 2
    except ModelError as exc:
        err.print(f"[red]model error:[/red] {escape(str(exc))}")
        return 1
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
