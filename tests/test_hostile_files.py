"""Hostile files and bad moments (issue 17): a run directory is written only inside itself, run files
are read within bounds (a bad record is skipped and counted, never fatal, never counted as an
episode), a full disk is one line and leaves no unfinished video looking finished, and a hostile
video or npz is refused from its header, before it is decoded."""

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from atari_vlm.bench.results import load_run
from atari_vlm.errors import ConfigError, DiskFull
from atari_vlm.report import render_report, write_report
from atari_vlm.rundir import read_jsonl, read_jsonl_records
from atari_vlm.runner import run_play
from atari_vlm.spec import RunSpec

SPEC = RunSpec.build(game="Pong", agent="random", seed=3, episodes=3, max_steps=4, video=True)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("template") / "run"
    run_play(SPEC, out)
    return out


@pytest.fixture
def run_dir(finished_run, tmp_path):
    """A finished 3-episode run of this test's own (a copy of one played once per module)."""
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


def outside_file(tmp_path, name="outside.txt", text="precious"):
    path = tmp_path / "elsewhere" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


# --- symbolic links: nothing is written, truncated or deleted outside the run directory ---------------


@pytest.mark.parametrize("name", ["report.html", ".report.html.tmp"])
def test_report_refuses_a_link_and_leaves_its_target_alone(run_dir, tmp_path, name):
    target = outside_file(tmp_path)
    (run_dir / name).symlink_to(target)
    with pytest.raises(ConfigError, match=f"{name} is a symbolic link"):
        write_report(run_dir)
    assert target.read_text() == "precious"


@pytest.mark.parametrize("name", [".write-probe", ".lock", "summary.json"])
def test_resume_refuses_a_link_and_leaves_its_target_alone(run_dir, tmp_path, name):
    target = outside_file(tmp_path)
    (run_dir / name).unlink(missing_ok=True)
    (run_dir / name).symlink_to(target)
    with pytest.raises(ConfigError, match=f"{name} is a symbolic link"):
        run_play(SPEC.replace(episodes=4), run_dir, resume=True)
    assert target.read_text() == "precious"


def test_a_linked_videos_folder_is_refused_and_its_files_kept(run_dir, tmp_path):
    elsewhere = tmp_path / "my-videos"
    elsewhere.mkdir()
    for name in ("holiday.mp4", "episode_0007.mp4", "episode_0000.mp4.part"):
        (elsewhere / name).write_bytes(b"not mine to delete")
    shutil.rmtree(run_dir / "videos")
    (run_dir / "videos").symlink_to(elsewhere, target_is_directory=True)
    for options in ({"resume": True}, {"overwrite": True}):
        with pytest.raises(ConfigError, match="videos is a symbolic link"):
            run_play(SPEC, run_dir, **options)
    assert sorted(p.name for p in elsewhere.iterdir()) == [
        "episode_0000.mp4.part",
        "episode_0007.mp4",
        "holiday.mp4",
    ]


def test_a_dangling_steps_link_creates_nothing_outside(tmp_path):
    out = tmp_path / "fresh"
    out.mkdir()
    target = tmp_path / "elsewhere" / "filled.jsonl"
    target.parent.mkdir()
    (out / "steps.jsonl").symlink_to(target)
    with pytest.raises(ConfigError, match=r"steps\.jsonl is a symbolic link"):
        run_play(SPEC, out)
    assert not target.exists()
    assert not (out / "config.json").exists()  # refused before anything was written


def test_a_link_deep_in_the_run_directory_is_refused_too(run_dir, tmp_path):
    target = outside_file(tmp_path)
    (run_dir / "videos" / "episode_0003.mp4").symlink_to(target)
    with pytest.raises(ConfigError, match=r"episode_0003\.mp4 is a symbolic link"):
        run_play(SPEC.replace(episodes=4), run_dir, resume=True)
    assert target.read_text() == "precious"


def test_the_run_directory_itself_may_be_a_link(tmp_path):
    real = tmp_path / "disk" / "run"
    real.mkdir(parents=True)
    (tmp_path / "run").symlink_to(real, target_is_directory=True)
    run_play(SPEC.replace(episodes=1), tmp_path / "run")
    write_report(tmp_path / "run")
    assert (real / "summary.json").is_file() and (real / "report.html").is_file()
    assert run_play(SPEC.replace(episodes=2), tmp_path / "run", resume=True).to_dict()["episodes"] == 2


# --- bad records: skipped and counted, never fatal, never an episode -----------------------------------


def episode_line(number, **changes):
    record = {
        "episode": number,
        "seed": 1,
        "return": 999.0,
        "steps": 4,
        "env_steps": 16,
        "decisions": 0,
        "unparsed": 0,
        "retries": 0,
    }
    return json.dumps({**record, **changes})


HOSTILE_LINES = [
    '{"episode": ' + "7" * 5000 + "}",  # beyond Python's int-string limit: a ValueError, not bad JSON
    "[" * 100_000 + "]" * 100_000,  # a RecursionError in json
    '{"episode": [1], "return": 5}',
    '{"episode": 2, "return": 5}',  # missing fields
    episode_line(-1),  # out of range (a 3-episode run has 0..2)
    episode_line(True),  # a bool is not an episode number (True == 1 in a dict)
    episode_line(1, steps="4"),
    episode_line(1, **{"return": float("nan")}),
    b'{"episode": 1, "text": "\xff\xfe"}',  # not UTF-8
]


def plant_bad_records(run_dir):
    """Episode 2's record replaced by the hostile lines (so it must be replayed); steps.jsonl too."""
    records = read_jsonl(run_dir / "episodes.jsonl")
    kept = [json.dumps(r) for r in records if r["episode"] != 2]
    lines = [x if isinstance(x, bytes) else x.encode() for x in kept[:1] + HOSTILE_LINES + kept[1:]]
    (run_dir / "episodes.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    bad_steps = [HOSTILE_LINES[0], HOSTILE_LINES[1], '{"episode": true, "step": 1}', '{"episode": [0]}']
    with open(run_dir / "steps.jsonl", "a") as f:
        f.write("\n".join(bad_steps) + "\n")


def test_bad_records_are_skipped_and_counted_by_the_reader(run_dir):
    plant_bad_records(run_dir)
    found = read_jsonl_records(run_dir / "episodes.jsonl")
    assert found.skipped == 3  # the huge int, the deep array, the bad bytes
    from atari_vlm.rundir import read_episode_records

    episodes = read_episode_records(run_dir / "episodes.jsonl", 3)
    assert [r["episode"] for r in episodes.records] == [0, 1]
    assert all(r["return"] != 999.0 for r in episodes.records)
    assert episodes.skipped == len(HOSTILE_LINES)


def test_resume_replays_what_bad_records_claimed_and_counts_nothing_twice(run_dir):
    plant_bad_records(run_dir)
    summary = run_play(SPEC, run_dir, resume=True)
    assert [e.episode for e in summary.episodes] == [0, 1, 2]
    assert 999.0 not in [e.episode_return for e in summary.episodes]
    assert summary.skipped_records == len(HOSTILE_LINES) + 4  # and the 4 bad steps
    written = json.loads((run_dir / "summary.json").read_text())
    assert written["episodes"] == 3 and written["skipped_records"] == summary.skipped_records
    assert sorted(r["episode"] for r in read_jsonl(run_dir / "episodes.jsonl")) == [0, 1, 2]
    assert sorted(p.name for p in (run_dir / "videos").iterdir()) == [f"episode_000{i}.mp4" for i in range(3)]


def test_report_and_results_survive_bad_records_and_count_only_real_episodes(run_dir):
    plant_bad_records(run_dir)
    page = render_report(run_dir)
    assert "bad records skipped" in page
    record = load_run(run_dir)
    assert sorted(e["episode"] for e in record.episodes) == [0, 1]  # not -1, 3, True, nor a 999 return
    assert record.skipped_records == len(HOSTILE_LINES)


@pytest.mark.parametrize("name", ["config.json", "summary.json"])
def test_a_run_file_that_is_not_utf8_is_a_one_line_error(run_dir, name):
    (run_dir / name).write_bytes(b'{"kind": "play", "x": "\xff\xfe"}')
    with pytest.raises(ConfigError, match=f"{name}: it is not UTF-8 text"):
        render_report(run_dir)


@pytest.mark.parametrize(
    "text, why",
    [
        ('{"spec": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested deeper"),
        ('{"a": ' + "9" * 5000 + "}", "digits"),
    ],
)
def test_a_hostile_config_is_a_one_line_error_for_report_and_resume(run_dir, text, why):
    (run_dir / "config.json").write_text(text)
    with pytest.raises(ConfigError, match=why):
        render_report(run_dir)
    with pytest.raises(ConfigError, match=why):
        run_play(SPEC, run_dir, resume=True)


def run_cli(*args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "COLUMNS": "400"}
    return subprocess.run(
        [sys.executable, "-m", "atari_vlm.cli", *args], capture_output=True, text=True, timeout=300, env=env
    )


def test_the_cli_says_one_line_and_exits_2_for_hostile_input(run_dir, tmp_path):
    (run_dir / "summary.json").write_bytes(b"\xff\xfe{}")
    protocol = tmp_path / "deep.json"
    protocol.write_text("[" * 100_000 + "]" * 100_000)
    huge = tmp_path / "huge.json"
    huge.write_text('{"name": ' + "1" * 5000 + "}")
    for args in (
        ("report", str(run_dir)),
        (
            "play",
            "--game",
            "Pong",
            "--agent",
            "random",
            "--protocol",
            str(protocol),
            "--out",
            str(tmp_path / "a"),
        ),
        (
            "play",
            "--game",
            "Pong",
            "--agent",
            "random",
            "--protocol",
            str(huge),
            "--out",
            str(tmp_path / "b"),
        ),
        ("play", "--game", "Pong", "--model", "demo", "--prompt", "/dev/zero", "--out", str(tmp_path / "c")),
    ):
        result = run_cli(*args)
        assert result.returncode == 2, (args, result.stderr[-2000:])
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
        assert "malformed variable" not in errors[0]  # a prompt file too large says just that
    assert not any((tmp_path / name).exists() for name in "abc")


# --- a full disk -------------------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path):
    """An 8 MiB tmpfs (room for a short run with its frame store; root only, skipped elsewhere), with
    the start-of-run free-space check lowered."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_mid_run_is_one_error_and_no_unfinished_video_looks_finished(tiny_disk, monkeypatch):
    import atari_vlm.rundir

    monkeypatch.setattr(atari_vlm.rundir, "MIN_FREE_BYTES", 0)
    out = tiny_disk / "run"
    filler = tiny_disk / "filler"

    def fill_the_disk(result):  # after episode 0, nothing more fits
        if result.episode == 0:
            with open(filler, "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError:
                    pass

    spec = SPEC.replace(max_steps=200, episodes=2)
    reference = run_play(spec, tiny_disk.parent / "reference")
    with pytest.raises(DiskFull, match=r"is full .*--resume") as caught:
        run_play(spec, out, on_episode=fill_the_disk)
    assert "\n" not in str(caught.value) and "Traceback" not in str(caught.value)
    assert sorted(p.name for p in (out / "videos").iterdir()) == ["episode_0000.mp4"]
    assert [r["episode"] for r in read_jsonl(out / "episodes.jsonl")] == [0]

    filler.unlink()  # space again: the resume plays episode 1 from its start
    summary = run_play(spec, out, resume=True)
    assert [e.episode for e in summary.episodes] == [0, 1]
    assert [(e.steps, e.episode_return) for e in summary.episodes] == [
        (e.steps, e.episode_return) for e in reference.episodes
    ]
    assert sorted(p.name for p in (out / "videos").iterdir()) == ["episode_0000.mp4", "episode_0001.mp4"]


def test_the_cli_reports_a_full_disk_in_one_line(tiny_disk):
    script = (
        "import sys, atari_vlm.rundir as r; r.MIN_FREE_BYTES = 0; from atari_vlm.cli import main; "
        "sys.exit(main(sys.argv[1:]))"
    )
    out = tiny_disk / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "COLUMNS": "400"}
    args = ["play", "--game", "Pong", "--agent", "random", "--episodes", "3", "--video", "--out", str(out)]
    result = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "OSError" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "is full" in errors[0] and "--resume" in errors[0], result.stderr
    finished = {f"episode_{r['episode']:04d}.mp4" for r in read_jsonl(out / "episodes.jsonl")}
    assert {p.name for p in (out / "videos").iterdir()} == finished  # the cut episode left no video


# --- hostile videos and arrays --------------------------------------------------------------------------


def write_video(path, width, height, frames=1):
    import imageio_ffmpeg

    writer = imageio_ffmpeg.write_frames(
        str(path), (width, height), codec="libx264", macro_block_size=2, ffmpeg_log_level="error"
    )
    writer.send(None)
    for _ in range(frames):
        writer.send(np.zeros((height, width, 3), np.uint8))
    writer.close()


def test_a_video_of_huge_frames_is_refused_before_decoding(tmp_path):
    from atari_vlm.video import MAX_VIDEO_SCALE, read_native_frames

    scale = MAX_VIDEO_SCALE + 1  # a 1440x1890 frame: still a "scaled Atari screen" by its shape
    path = tmp_path / "huge.mp4"
    write_video(path, 160 * scale, 210 * scale)
    with pytest.raises(ConfigError, match="not a 160x210 Atari screen scaled 1 to 8"):
        next(read_native_frames(path))
    fine = tmp_path / "fine.mp4"
    write_video(fine, 320, 420 + 24, frames=3)  # scale 2 with the caption strip: what play writes
    assert [f.shape for f in read_native_frames(fine)] == [(210, 160, 3)] * 3
    assert len(list(read_native_frames(fine, max_frames=2))) == 2


def test_the_report_shows_no_frames_of_a_hostile_video_and_does_not_fail(run_dir):
    write_video(run_dir / "videos" / "episode_0001.mp4", 160 * 9, 210 * 9)
    assert "episode_0001" not in render_report(run_dir)  # refused from its header: no frame, no failure


def npz_bytes(**arrays):
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def test_an_npz_that_expands_a_thousandfold_is_refused_before_loading(tmp_path):
    from atari_vlm.memory import MAX_NPZ_EXPANSION, _read_npz

    bomb = tmp_path / "bomb.npz"
    bomb.write_bytes(npz_bytes(frames=np.zeros((100, 210, 160, 3), np.uint8)))  # 10 MB in ~10 KB
    member = zipfile.ZipFile(bomb).infolist()[0]
    assert member.file_size > MAX_NPZ_EXPANSION * member.compress_size
    with pytest.raises(ConfigError, match=r"expands from .* more than 600 times"):
        _read_npz(bomb, {"frames": ("u1",)}, ["frames"], 100)
    import gymnasium as gym

    env = gym.make("ALE/Pong-v5")
    frames = [env.reset(seed=0)[0]] + [env.step(env.action_space.sample())[0] for _ in range(99)]
    env.close()
    real = tmp_path / "real.npz"
    real.write_bytes(npz_bytes(frames=np.stack(frames)))
    assert _read_npz(real, {"frames": ("u1",)}, ["frames"], 100)["frames"].shape == (100, 210, 160, 3)
