"""What the command line prints, as a person at an 80-column terminal or a script at a pipe sees it:
tables that fit (names whole), JSON that parses, errors as one line, no ALE banner, defaults in
--help, progress bars that end at the real total, and dry-run projections that add up."""

import json
import os
import re
import subprocess
import sys

import pytest

from atari_vlm.cli import main
from atari_vlm.models.presets import list_presets
from atari_vlm.rundir import read_jsonl
from atari_vlm.terminal import Column, fit_columns, num, usd
from atari_vlm.testing.openai_server import serve_in_thread


def run_cli(*args, columns="80", env=None):
    """The real command, piped (no terminal on any stream), at ``columns`` (None: COLUMNS unset)."""
    environ = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if columns is not None:
        environ["COLUMNS"] = columns
    return subprocess.run(
        [sys.executable, "-m", "atari_vlm.cli", *args],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=600,
        env={**environ, "OPENAI_API_KEY": "", "ANTHROPIC_API_KEY": "", "GEMINI_API_KEY": "", **(env or {})},
    )


BUILT_IN = ["demo", "pong-tiny"]  # the models atari-vlm builds itself, after the presets
NAMES = [p.name + (" (legacy)" if p.legacy else "") for p in list_presets()] + BUILT_IN


def table_rows(text):
    return [line for line in text.splitlines() if line.startswith("│")]


def test_models_at_80_columns_fits_with_one_line_per_model_and_names_whole():
    result = run_cli("models")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    rows = table_rows(result.stdout)
    assert len(rows) == len(NAMES) == len(list_presets()) + 2  # one a line, none wrapped
    assert [row.split("│")[1].strip() for row in rows] == NAMES
    assert len(lines) <= len(NAMES) + 12  # header, footers, recommendation (355 lines before)
    assert "not shown at this width" in result.stdout and "--wide" in result.stdout
    assert "A.L.E" not in result.stdout + result.stderr


def test_models_piped_without_a_terminal_is_not_wrapped_at_80():
    result = run_cli("models", columns=None)
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    assert len(rows) == len(NAMES)  # every column, still one line per model
    assert max(len(line) for line in result.stdout.splitlines()) > 200
    for preset, row in zip(list_presets(), rows, strict=False):
        assert preset.model_id in row and preset.hardware in row  # the whole row on its one line


def test_models_wide_shows_every_column_at_any_width():
    result = run_cli("models", "--wide", columns="80")
    rows = table_rows(result.stdout)
    assert len(rows) == len(NAMES)
    assert all(p.model_id in row for p, row in zip(list_presets(), rows, strict=False))
    assert "not shown at this width" not in result.stdout


def test_models_json_has_every_preset_and_demo():
    result = run_cli("models", "--json")
    data = json.loads(result.stdout)
    assert [m["name"] for m in data["models"]] == [p.name for p in list_presets()] + BUILT_IN
    keys = {"name", "provider", "model_id", "input_per_mtok", "output_per_mtok", "status", "usable", "reason"}
    assert all(keys <= set(m) for m in data["models"])
    gpt = next(m for m in data["models"] if m["name"] == "gpt-4o-mini")
    assert (gpt["input_per_mtok"], gpt["output_per_mtok"], gpt["usable"]) == (0.15, 0.6, False)
    assert data["models"][-1]["usable"] is True and "demo" in data["recommendation"]


def test_games_json_and_table():
    data = json.loads(run_cli("games", "--json", "--rich-only").stdout)
    assert len(data) == 6 and all(g["rich_state_text"] for g in data)
    assert {"game", "env_id"} <= set(data[0])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["play", "--game", "Pong", "--model", "openai:gpt-4o-mini"],
            "error: no OpenAI API key",
        ),  # ConfigError
        (["play", "--game", "Pongg"], "error: unknown game 'Pongg'"),
        (
            ["play", "--game", "Pong", "--frame-stack", "x"],
            "error: argument --frame-stack: expected an integer",
        ),
        (
            ["bench", "--games", "Pong", "--models", "nosuch"],
            "error: the sweep was not started: model 'nosuch'",
        ),
        (
            ["results", "/nonexistent/runs/of/a/long/name"],
            "error: /nonexistent/runs/of/a/long/name does not exist",
        ),
    ],
)
def test_an_error_is_exactly_one_line_on_stderr_with_exit_2(tmp_path, args, message):
    result = run_cli(*args, "--out", str(tmp_path / "x"), columns="40")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(message), result.stderr
    assert len(result.stderr) > 40  # longer than the terminal, still one line
    assert result.stdout == ""
    assert not (tmp_path / "x").exists()


def test_argparse_errors_are_one_line_too():
    result = run_cli("bench", "--games", "Pong", columns="40")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: the following arguments are required: --out")


def test_play_json_is_the_summary(tmp_path):
    args = [
        "play",
        "--game",
        "Pong",
        "--agent",
        "random",
        "--episodes",
        "2",
        "--max-steps",
        "6",
        "--no-video",
    ]
    result = run_cli(*args, "--json", "--out", str(tmp_path / "r"))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)  # nothing else on stdout: the report's path went to stderr
    assert data["episodes"] == 2 and data["steps"] == 12 and len(data["returns"]) == 2
    assert "report:" in result.stderr


def test_no_ale_banner_unless_verbose(tmp_path):
    args = ["play", "--game", "Pong", "--agent", "random", "--max-steps", "2", "--no-video", "--no-report"]
    quiet = run_cli(*args, "--out", str(tmp_path / "a"))
    assert quiet.returncode == 0, quiet.stderr
    assert "A.L.E" not in quiet.stdout + quiet.stderr and "Stella" not in quiet.stderr
    loud = run_cli(*args, "--out", str(tmp_path / "b"), "--verbose")
    assert "A.L.E: Arcade Learning Environment" in loud.stderr  # the banner is there to silence


def test_bare_command_prints_help_and_exits_0(capsys):
    assert main([]) == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: atari-vlm") and "bench" in text and "models" in text


def test_help_shows_defaults_once_per_option(capsys):
    with pytest.raises(SystemExit):
        main(["record", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--episodes EPISODES default: 1 " in text and "--scale SCALE human play: window scale" in text
    assert "(default: 3)" in text  # --scale
    with pytest.raises(SystemExit):
        main(["play", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    frame_skip = text.split("--frame-skip FRAME_SKIP emulator", 1)[1].split(" --", 1)[0]
    assert frame_skip.count("(default: 4)") == 1


def test_progress_ends_at_the_decisions_really_played(tmp_path):
    """Two random Pong episodes end well before a 5000-decision cap: the bar ends full at their sum."""
    out = tmp_path / "run"
    args = ["play", "--game", "Pong", "--agent", "random", "--episodes", "2", "--max-steps", "5000"]
    result = run_cli(*args, "--no-video", "--no-report", "--out", str(out))
    assert result.returncode == 0, result.stderr
    played = sum(e["steps"] for e in read_jsonl(out / "episodes.jsonl"))
    assert played < 10_000
    assert f"{played}/{played} decisions" in result.stderr
    assert not re.search(r"\d\.\d{4,}", result.stdout)  # returns rounded: no 0.333333


def test_numbers_are_rounded_for_people():
    assert [num(1 / 3), num(-20.333333), num(1739.0), num(None)] == ["0.33", "-20.33", "1739", "-"]
    assert [usd(0.000375123), usd(0.5), usd(1234.567), usd(None), usd(0)] == [
        "$0.000375",
        "$0.50",
        "$1,234.57",
        "unknown",
        "$0",
    ]


def test_fit_columns_drops_the_least_needed_first():
    columns = [Column("name"), Column("a", 2), Column("b", 1), Column("prose", 3, wrap=True, min_width=10)]
    rows = [["x" * 20, "y" * 10, "z" * 10, "w " * 40]]
    assert fit_columns(columns, rows, None) == [0, 1, 2, 3]
    assert fit_columns(columns, rows, 1 + 23 + 13) == [0, 2]  # b outranks a
    assert fit_columns(columns, rows, 1 + 23 + 13 + 13) == [0, 1, 2]
    assert fit_columns(columns, rows, 1 + 23 + 13 + 13 + 13) == [0, 1, 2, 3]  # prose down to 10


def test_results_fit_80_columns_and_json_parses(tmp_path):
    for seed in (0, 1):
        args = ["play", "--game", "Breakout", "--agent", "random", "--episodes", "2", "--max-steps", "20"]
        assert (
            main(
                [*args, "--seed", str(seed), "--no-video", "--no-report", "--out", str(tmp_path / f"r{seed}")]
            )
            == 0
        )
    result = run_cli("results", str(tmp_path), "--out", str(tmp_path / "res"), "--reps", "100")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if str(tmp_path) not in line]  # paths: unwrapped
    assert max(len(line) for line in lines) <= 80
    assert len([r for r in table_rows(result.stdout) if r.startswith("│ Breakout")]) == 1  # 4 episodes pool
    data = json.loads(run_cli("results", str(tmp_path), "--out", str(tmp_path / "res"), "--json").stdout)
    assert len(data["rows"]) == 1 and data["rows"][0]["episodes"] == 4
    assert data["files"]["markdown"].endswith("results.md")


# --- --dry-run ------------------------------------------------------------------------------------


def test_bench_dry_run_is_the_sum_of_its_combinations_with_unknown_price(tmp_path, capsys):
    """A model behind --base-url has no price: tokens and time are still projected, dollars unknown."""
    with serve_in_thread(reply="ACTION: FIRE") as server:
        args = ["bench", "--games", "Pong,Breakout", "--models", "openai:m", "--prompts", "basic,cot"]
        args += ["--seeds", "0,1,2", "--max-steps", "7", "--base-url", server.base_url, "--api-key", "k"]
        assert main([*args, "--out", str(tmp_path / "b"), "--dry-run", "--json"]) == 0
        calls = [r for r in server.requests if r.path.endswith("completions")]
    data = json.loads(capsys.readouterr().out)
    assert len(calls) == 2 == data["measured_decisions"]  # one real decision per model and prompt
    rows = data["combinations"]
    assert len(rows) == 2 * (2 + 2)  # per game: random, expert, 2 prompts
    for r in rows:
        assert r["decisions"] == 3 * 7  # seeds x max_steps
        if r["agent"] == "vlm":
            assert r["input_tokens"] > 0 and r["estimated_cost_usd"] is None
            assert r["projected_input_tokens"] == r["input_tokens"] * 21
            assert r["projected_output_tokens"] == r["output_tokens"] * 21
            assert r["projected_model_time_s"] == pytest.approx(r["latency_s"] * 21, abs=0.06)
        else:
            assert r["projected_input_tokens"] == 0 and r["estimated_cost_usd"] == 0
    totals = data["totals"]
    for key in ("decisions", "projected_input_tokens", "projected_output_tokens", "model_decisions"):
        assert totals[key] == sum(r[key] for r in rows)
    assert totals["model_decisions"] == 4 * 21 and totals["estimated_cost_usd"] is None
    assert not (tmp_path / "b").exists()


def test_bench_dry_run_prices_a_priced_model(tmp_path, capsys, monkeypatch):
    from test_costs_run import PRICES, priced_loader

    with serve_in_thread(reply="ACTION: FIRE") as server:
        for where in ("atari_vlm.runner.load_model", "atari_vlm.bench.sweep.load_model"):
            monkeypatch.setattr(where, priced_loader(server.base_url))
        args = ["bench", "--games", "Pong", "--models", "openai:m", "--seeds", "0,1", "--max-steps", "5"]
        assert main([*args, "--out", str(tmp_path / "b"), "--dry-run", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    (vlm,) = [r for r in data["combinations"] if r["agent"] == "vlm"]
    per = (vlm["input_tokens"] * PRICES.input_per_mtok + vlm["output_tokens"] * PRICES.output_per_mtok) / 1e6
    assert vlm["cost_per_decision_usd"] == pytest.approx(per)
    assert vlm["estimated_cost_usd"] == pytest.approx(per * 10)
    assert data["totals"]["estimated_cost_usd"] == pytest.approx(per * 10)


def test_bench_dry_run_table_says_unknown_dollars(tmp_path):
    with serve_in_thread(reply="ACTION: FIRE") as server:
        args = ["bench", "--games", "Pong", "--models", "openai:m", "--seeds", "0", "--max-steps", "3"]
        result = run_cli(
            *args, "--base-url", server.base_url, "--api-key", "k", "--out", str(tmp_path / "b"), "--dry-run"
        )
    assert result.returncode == 0, result.stderr
    (row,) = [r for r in table_rows(result.stdout) if "openai:m" in r]
    assert "unknown" in row and "<=3" in row
    assert "dollars are unknown" in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 80


def test_play_dry_run_estimates_tokens_when_the_server_counts_none(tmp_path, capsys):
    with serve_in_thread(reply="ACTION: FIRE", report_usage=False) as server:
        args = [
            "play",
            "--game",
            "Pong",
            "--model",
            "openai:m",
            "--base-url",
            server.base_url,
            "--api-key",
            "k",
        ]
        assert (
            main([*args, "--episodes", "2", "--max-steps", "10", "--dry-run", "--out", str(tmp_path / "r")])
            == 0
        )
    text = " ".join(capsys.readouterr().out.split())
    match = re.search(r"decision of openai:m: ([\d,]+) input \+ ([\d,]+) output tokens \(estimated", text)
    assert match, text
    per_in = int(match.group(1).replace(",", ""))
    assert per_in > 0 and f"at most 20 decisions, {per_in * 20:,} input" in text
    assert "unknown in all" in text and not (tmp_path / "r").exists()


def test_train_dry_run_counts_training_and_evaluation_episodes(tmp_path):
    with serve_in_thread(reply="ACTION: FIRE") as server:
        args = [
            "train",
            "--game",
            "Pong",
            "--vlm",
            "openai:m",
            "--base-url",
            server.base_url,
            "--api-key",
            "k",
        ]
        args += ["--episodes", "4", "--eval-every", "2", "--max-steps", "5", "--out", str(tmp_path / "t")]
        result = run_cli(*args, "--dry-run", columns=None)
        calls = [r for r in server.requests if r.path.endswith("completions")]
    assert result.returncode == 0, result.stderr
    # 4 training episodes + evaluations at 0, 2 and 4 on the 3 default held-out seeds: 13 episodes x 5
    assert "at most 65 decisions" in result.stdout and "unknown in all" in result.stdout
    assert len(calls) == 1 and not (tmp_path / "t").exists()


def test_finetune_prints_no_library_warnings_unless_verbose(tmp_path):
    """bitsandbytes' kernel notice and transformers' FutureWarnings reach stderr only with --verbose."""
    from atari_vlm.models.tiny import build_tiny_checkpoint

    checkpoint = build_tiny_checkpoint("llava", tmp_path / "tiny")
    record = ["record", "--game", "Pong", "--agent", "expert", "--max-steps", "8"]
    record += ["--out", str(tmp_path / "d")]
    assert main(record) == 0
    args = ["finetune", "--model", str(checkpoint), "--data", str(tmp_path / "d"), "--max-examples", "4"]
    quiet = run_cli(*args, "--out", str(tmp_path / "q"))
    assert quiet.returncode == 0, quiet.stderr
    assert "Warning" not in quiet.stderr and "warn(" not in quiet.stderr and "kernels" not in quiet.stderr
    loud = run_cli(*args, "--out", str(tmp_path / "v"), "--verbose")
    assert loud.returncode == 0 and "Warning" in loud.stderr  # there was something to silence


def test_untrusted_cells_cannot_drive_the_terminal():
    from rich.console import Console

    from atari_vlm.terminal import render_table

    console = Console(record=True, width=80, force_terminal=False)
    render_table(console, [Column("model"), Column("x", 1)], [["evil\x1b[2J\x1b]0;title\x07[red]m", "1"]])
    text = console.export_text()
    assert "\x1b" not in text and "\x07" not in text
    assert "[red]m" in text  # markup is shown as text, not applied
