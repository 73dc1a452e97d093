"""``report.html``: one self-contained page that shows what a run did, step by step.

No network is needed to view it: CSS and JS are inline and plots are PNG data URLs. The episode
viewer shows, per step, what the request sent (the system prompt, then every part in order: text, and
each image as the model received it) beside the answer, how the action was obtained and each legal
action's probability. Images are loaded by reference from the run's frame store (``frames/<hash>.png``,
:mod:`atari_vlm.framestore`) as the viewer reaches them, so a long run's page stays small; a run
without a store falls back to JPEG thumbnails of its videos (subsampled to a cap the page states). A
strict Content-Security-Policy allows only the page's own script (by nonce), data: images and the
run directory's own files.

Model answers are untrusted text: server-side text goes through :func:`html.escape`; run data reaches
the script as JSON in a ``<script type="application/json">`` block (every ``<``, ``>``, ``&`` escaped as
``\\u003c`` etc., so neither ``</`` nor ``<!--`` can appear), and
the script writes it only through ``textContent``.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
import secrets
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from atari_vlm.errors import ConfigError, require
from atari_vlm.framestore import FRAMES_DIR, HASH, PROMPTS_DIR
from atari_vlm.rundir import (
    read_episode_records,
    read_json_file,
    read_jsonl,
    read_jsonl_records,
    read_run_spec,
    refuse_links,
    write_text_atomic,
)
from atari_vlm.spec import RunSpec
from atari_vlm.video import read_native_frames

MAX_FRAMES_PER_EPISODE = 600
MAX_FRAMES_TOTAL = 600  # video thumbnails are embedded (~6 KB each): this keeps such a page near 4 MB
MAX_ACTIONS = 64  # ALE has 18: no step (and no run) shows probabilities for more actions than this
MAX_PROMPT_BYTES = 1 << 20  # a stored system prompt larger than this is not shown (run files are untrusted)
JPEG_QUALITY = 80
LEARNING_CURVE_FILES = ("learning_curve.jsonl", "curves.jsonl", "learning_curve.csv")

# One row per decision in the viewer's JSON, as lists in this column order (smaller than dicts).
STEP_COLUMNS = (
    "step",
    "action",
    "action_name",
    "parsed",
    "obtained",
    "reward",
    "return",
    "lives",
    "input_tokens",
    "output_tokens",
    "image_tokens",
    "latency_s",
    "retries",
    "cost_usd",
    "usage_estimated",  # the server's usage was unbelievable: the tokens shown are atari-vlm's count
    "answer_truncated",  # the answer was cut to the backend's cap before it was stored
    "text",
    "probs",  # list over ``actions`` (None where unknown), or None
    "screen",  # index into ``frames`` of the screen the step was decided on, or -1
    "sent",  # [system or -1, [[role, [[0, [line indices]] | [1, frame index or -1, label index]]]]]
)


# --- reading the run -----------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    """A JSON file of the run, read within bounds (:func:`~atari_vlm.rundir.read_json_file`)."""
    return read_json_file(path)


def _step_episode_ok(step: Mapping[str, Any], episodes: int) -> bool:
    number = step.get("episode")
    return isinstance(number, int) and not isinstance(number, bool) and 0 <= number < episodes


def _num(value: Any) -> float | None:
    """A finite number from run data, else None (run files are data from outside: never trust types)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _episode_key(number: Any) -> tuple[int, float, str]:
    """Sort episodes by number; anything odd in a hand-made file sorts after, by its text."""
    n = _num(number)
    return (0, n, "") if n is not None else (1, 0.0, str(number))


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf (and a hand-made steps.jsonl may hold them): show them as missing."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _sum(records: Iterable[Mapping[str, Any]], key: str) -> float | None:
    values = [v for v in (_num(r.get(key)) for r in records) if v is not None]
    return sum(values) if values else None


def _learning_curve(run_dir: Path) -> list[dict[str, float]]:
    """Records of the trainer's learning curve (first file found of LEARNING_CURVE_FILES)."""
    import csv

    for name in LEARNING_CURVE_FILES:
        path = run_dir / name
        if not path.is_file():
            continue
        if path.suffix == ".csv":
            with open(path, encoding="utf-8", newline="") as f:
                raw: list[dict[str, Any]] = list(csv.DictReader(f))
        else:
            raw = read_jsonl(path)
        records = []
        for r in raw:
            row = {
                k: _num(_to_float(r.get(k)))
                for k in (
                    "episode",
                    "eval_mean_return",
                    "eval_std",
                    "random_mean_return",
                    "train_return",
                    "n_exemplars",
                )
            }
            if row["episode"] is not None and row["eval_mean_return"] is not None:
                records.append(row)
        return sorted(records, key=lambda r: r["episode"])
    return []


def _to_float(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return value


# --- frames ----------------------------------------------------------------------------------------------


def _video_path(run_dir: Path, episode: Mapping[str, Any] | None, number: Any) -> Path | None:
    """The episode's video, only if it lies inside the run directory (the field is run data)."""
    rel = episode.get("video") if episode else None
    if not isinstance(rel, str) and isinstance(number, int):
        rel = f"videos/episode_{number:04d}.mp4"
    if not isinstance(rel, str):
        return None
    root = run_dir.resolve()
    path = (run_dir / rel).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path


def _pick_steps(n_steps: int, cap: int) -> list[int]:
    """Which decision steps (1-based) get their own frame: all, or ``cap`` spread evenly."""
    if n_steps <= cap:
        return list(range(1, n_steps + 1))
    return sorted({round(float(x)) for x in np.linspace(1, n_steps, cap)})


def _thumbnails(video: Path, steps: Sequence[int]) -> dict[int, str]:
    """JPEG data URLs of the screen before each of ``steps`` (video frame ``step - 1``), at native
    size without the caption strip."""
    import cv2

    wanted = {s - 1: s for s in steps}
    last = max(wanted, default=-1)
    out: dict[int, str] = {}
    frames = read_native_frames(video)
    try:
        for index, frame in enumerate(frames):
            if index > last:
                break
            if index not in wanted:
                continue
            ok, jpeg = cv2.imencode(
                ".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
            )
            if ok:
                out[wanted[index]] = "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode()
    except (OSError, RuntimeError, StopIteration, ConfigError):
        pass  # an unreadable, truncated or foreign video: the viewer shows the frames read so far
    finally:
        frames.close()
    return out


# --- what each step sent (the frame store) ------------------------------------------------------------


class _Interned:
    """Distinct values once, each referred to by its index (a long run repeats most of what it sends)."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._index: dict[Any, int] = {}

    def add(self, value: Any) -> int:
        index = self._index.get(value)
        if index is None:
            index = self._index[value] = len(self.items)
            self.items.append(value)
        return index


def _stored(run_dir: Path, folder: str, suffix: str) -> set[str]:
    """The hashes stored in a folder of the frame store (a link in its place counts as no store)."""
    path = run_dir / folder
    if path.is_symlink() or not path.is_dir():
        return set()
    names = set()
    for entry in os.scandir(path):
        stem, _, ext = entry.name.partition(".")
        if ext == suffix and HASH.fullmatch(stem) and entry.is_file(follow_symlinks=False):
            names.add(stem)
    return names


def _system_text(run_dir: Path, key: str) -> str:
    path = run_dir / PROMPTS_DIR / f"{key}.txt"
    try:
        if path.is_symlink() or path.stat().st_size > MAX_PROMPT_BYTES:
            return "(the stored system prompt is too large or not a file: not shown)"
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(the system prompt was not kept)"


def _shape_label(shape: Any) -> str:
    if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) for n in shape):
        return "image"
    if len(shape) == 2:
        return f"{shape[1]}x{shape[0]} grayscale"
    if len(shape) == 3:
        return f"{shape[1]}x{shape[0]} RGB"
    return "image"


class _Sent:
    """Turns the ``sent`` and ``screen`` fields of step records into the viewer's compact form."""

    def __init__(self, run_dir: Path) -> None:
        self.frames_present = _stored(run_dir, FRAMES_DIR, "png")
        self.systems_present = _stored(run_dir, PROMPTS_DIR, "txt")
        self.frames, self.texts, self.systems = _Interned(), _Interned(), _Interned()
        self.actions = _Interned()

    def frame(self, key: Any) -> int:
        return self.frames.add(key) if isinstance(key, str) and key in self.frames_present else -1

    def sent(self, sent: Any) -> list[Any] | None:
        if not isinstance(sent, dict) or not isinstance(sent.get("messages"), list):
            return None
        key = sent.get("system")
        system = self.systems.add(key) if isinstance(key, str) and key in self.systems_present else -1
        messages = []
        for message in sent["messages"]:
            if not isinstance(message, dict) or not isinstance(message.get("parts"), list):
                continue
            role = message.get("role") if isinstance(message.get("role"), str) else "?"
            parts: list[list[int]] = []
            for part in message["parts"]:
                if not isinstance(part, dict):
                    continue
                if isinstance(part.get("text"), str):  # by line: a turn repeats most of the last one's
                    parts.append([0, [self.texts.add(line) for line in part["text"].split("\n")]])
                elif "shape" in part or "image" in part:
                    label = self.texts.add(_shape_label(part.get("shape")))
                    parts.append([1, self.frame(part.get("image")), label])
            messages.append([role[:40], parts])
        return [system, messages]

    def probs(self, probs: Any) -> dict[str, float | None] | None:
        """A step's probabilities by action (made a list over every action seen, once all are known)."""
        if not isinstance(probs, dict) or not 0 < len(probs) <= MAX_ACTIONS:
            return None
        values = {k[:64]: _num(v) for k, v in probs.items() if isinstance(k, str)}
        for name in values:
            if len(self.actions.items) < MAX_ACTIONS:  # over the whole run, not per step
                self.actions.add(name)
        return values

    def data(self, run_dir: Path) -> dict[str, Any]:
        return {
            "frames": self.frames.items,
            "texts": self.texts.items,
            "systems": [_system_text(run_dir, key) for key in self.systems.items],
            "actions": self.actions.items,
        }


# --- the viewer's data -----------------------------------------------------------------------------------


def _viewer_data(
    run_dir: Path,
    steps: list[dict[str, Any]],
    episodes: list[dict[str, Any]],
    *,
    max_frames_per_episode: int,
    max_frames_total: int,
) -> dict[str, Any]:
    by_episode: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for s in steps:
        by_episode[s.get("episode")].append(s)
    ep_records = {e.get("episode"): e for e in episodes}
    order = sorted(by_episode, key=_episode_key)
    sent = _Sent(run_dir)
    encoded: dict[Any, list[list[Any]]] = {}
    for number in order:
        by_episode[number].sort(key=lambda s: _num(s.get("step")) or 0)
        encoded[number] = [
            [
                *(_clean(s.get(c)) for c in STEP_COLUMNS[:-3]),
                sent.probs(s.get("probs")),
                sent.frame(s.get("screen")),
                sent.sent(s.get("sent")),
            ]
            for s in by_episode[number]
        ]
    actions = sent.actions.items
    for rows in encoded.values():  # each step's probabilities as a list over every action seen
        for row in rows:
            if row[-3] is not None:
                row[-3] = [row[-3].get(a) for a in actions]
    from_video = [n for n in order if all(row[-2] < 0 for row in encoded[n])]
    cap = max(1, min(max_frames_per_episode, max_frames_total // max(1, len(from_video))))
    out = []
    for number in order:
        rows = by_episode[number]
        record = ep_records.get(number)
        stored = number not in from_video
        video = None if stored else _video_path(run_dir, record, number)
        chosen = _pick_steps(len(rows), cap) if video else []
        frames = _thumbnails(video, chosen) if video else {}
        images: list[str] = []
        frame_of_step: list[int] = []  # index into images of the frame shown at each step (-1: none)
        frame_step: list[int] = []  # which step's frame that is
        current, current_step = -1, 0
        for i in range(1, len(rows) + 1):
            if i in frames:
                images.append(frames[i])
                current, current_step = len(images) - 1, i
            frame_of_step.append(current)
            frame_step.append(current_step)
        last_return = rows[-1].get("return") if rows else None
        out.append(
            {
                "episode": number,
                "return": _clean(record.get("return") if record else last_return),
                "finished": record is not None,
                "steps": encoded[number],
                "images": images,
                "frame_of_step": frame_of_step,
                "frame_step": frame_step,
                "frames_note": _frames_note(len(rows), len(images), video is not None, stored),
            }
        )
    return {"columns": list(STEP_COLUMNS), "episodes": out, **sent.data(run_dir)}


def _frames_note(n_steps: int, n_frames: int, has_video: bool, stored: bool = False) -> str:
    if stored:
        return "Screens and images from the run's frame store (frames/), loaded as you step."
    if not has_video:
        return "No video for this episode: the viewer shows the decisions without frames."
    if n_frames >= n_steps:
        return f"Every step has its frame ({n_frames} frames)."
    return (
        f"{n_frames} of {n_steps} frames embedded (evenly subsampled to keep the page small); a step "
        "without its own frame shows the nearest earlier one, and says so. The full video is in the run "
        "directory."
    )


def _json_for_script(data: Any) -> str:
    """JSON that cannot end its <script> block early (``</``) or open an HTML comment (``<!--``) in it.

    Every ``<``, ``>`` and ``&`` becomes a JSON unicode escape (as Django's ``json_script`` does), which
    covers both, and any other markup, while ``JSON.parse`` gives back the exact text.
    """
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# --- the page --------------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, digits: int = 1) -> str:
    n = _num(value)
    if n is None:
        return "-"
    if n == int(n) and abs(n) < 1e15:
        return f"{int(n):,}"
    return f"{n:,.{digits}f}"


def _img(png: bytes, alt: str) -> str:
    return f'<img class="plot" alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _summary(
    config: dict[str, Any], steps: list[dict[str, Any]], episodes: list[dict[str, Any]]
) -> list[tuple[str, str]]:
    returns = [r for r in (_num(e.get("return")) for e in episodes) if r is not None]
    decisions = _sum(episodes, "decisions") or 0
    unparsed = _sum(episodes, "unparsed") or 0
    latencies = [v for v in (_num(s.get("latency_s")) for s in steps) if v is not None]
    cost = _sum(episodes, "cost_usd")
    if cost is None:
        cost = _sum(steps, "cost_usd")
    items = [
        ("episodes", _fmt(len(episodes))),
        ("mean return", _fmt(np.mean(returns), 2) if returns else "-"),
        (
            "returns",
            ", ".join(_fmt(r) for r in returns)
            if len(returns) <= 12
            else f"{min(returns):g} to {max(returns):g}",
        ),
        ("steps", _fmt(_sum(episodes, "steps"))),
        ("model decisions", _fmt(decisions)),
        (
            "unparsable answers",
            f"{_fmt(unparsed)} ({unparsed / decisions:.1%})" if decisions else _fmt(unparsed),
        ),
        ("retries", _fmt(_sum(episodes, "retries"))),
        ("input tokens", _fmt(_sum(episodes, "input_tokens"))),
        ("output tokens", _fmt(_sum(episodes, "output_tokens"))),
        ("image tokens", _fmt(_sum(episodes, "image_tokens"))),
        ("mean latency", f"{np.mean(latencies):.3f} s" if decisions and latencies else "-"),
        ("wall time", f"{_fmt(_sum(episodes, 'wall_s'), 1)} s"),
    ]
    if cost is not None:
        items.insert(10, ("cost", f"${cost:,.4f}"))
    return items


def _settings(config: dict[str, Any], spec: RunSpec) -> list[tuple[str, str]]:
    """Every setting of the run, from its spec (the sections that shape its play), and what it loaded."""
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    items: list[tuple[str, Any]] = [
        ("model (loaded)", model.get("spec", "-") if model else "-"),
        ("provider", model.get("provider", "-") if model else "-"),
        ("fingerprint", spec.fingerprint()),
        ("atari-vlm", config.get("atari_vlm_version")),
    ]
    data = spec.to_dict()
    items += [(k, v) for k, v in data.items() if k not in spec.SECTIONS]
    for section in spec.relevant_sections():
        items += [(f"{section} {k}", v) for k, v in data[section].items() if k != "game"]
    return [
        (k, "-" if v is None else json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in items
    ]


def _episodes_table(episodes: list[dict[str, Any]]) -> str:
    cols = (
        ("episode", "episode"),
        ("return", "return"),
        ("steps", "steps"),
        ("decisions", "decisions"),
        ("unparsed", "unparsed"),
        ("input_tokens", "tokens in"),
        ("output_tokens", "tokens out"),
        ("cost_usd", "cost $"),
        ("model_latency_s", "model s"),
        ("wall_s", "wall s"),
    )
    has_cost = any(_num(e.get("cost_usd")) is not None for e in episodes)
    cols = tuple(c for c in cols if c[0] != "cost_usd" or has_cost)
    head = "".join(f"<th>{_e(label)}</th>" for _, label in cols) + "<th>end</th>"
    body = []
    for e in episodes:
        end = (
            "game over" if e.get("terminated") is True else "step cap" if e.get("truncated") is True else "-"
        )
        cells = "".join(f"<td>{_e(_fmt(e.get(k), 4 if k == 'cost_usd' else 2))}</td>" for k, _ in cols)
        body.append(f"<tr>{cells}<td>{_e(end)}</td></tr>")
    return f"<table class='grid'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _plots(
    steps: list[dict[str, Any]], episodes: list[dict[str, Any]], curve: list[dict[str, float]]
) -> list[str]:
    from atari_vlm.report import plots

    out = []
    if curve:
        out.append(_img(plots.learning_curve_plot(curve), "learning curve"))
    finished = [(e.get("episode"), _num(e.get("return"))) for e in episodes]
    finished = [(n, r) for n, r in finished if r is not None]
    if finished:
        out.append(
            _img(plots.returns_plot([n for n, _ in finished], [r for _, r in finished]), "return per episode")
        )
    cumulative: dict[Any, list[float]] = defaultdict(list)
    for s in sorted(steps, key=lambda s: (_episode_key(s.get("episode")), _num(s.get("step")) or 0)):
        value = _num(s.get("return"))
        if value is not None:
            cumulative[s.get("episode")].append(value)
    if cumulative:
        out.append(_img(plots.cumulative_reward_plot(dict(cumulative)), "cumulative reward"))
    latencies = [v for v in (_num(s.get("latency_s")) for s in steps) if v is not None]
    if latencies and max(latencies) > 0:
        out.append(_img(plots.latency_histogram(latencies), "latency histogram"))
    return out


def _training(run_dir: Path) -> str:
    """A training run's section: each evaluation beside the random agent on the same seeds, and what
    training and evaluation cost ("" for a run that is not a training run)."""
    curve = _learning_curve(run_dir)
    if not curve:
        return ""
    head = "".join(
        f"<th>{_e(h)}</th>"
        for h in (
            "after episode",
            "eval mean",
            "eval std",
            "random, same seeds",
            "eval - random",
            "training return",
            "exemplar images",
        )
    )
    body = []
    for r in curve:
        gap = None
        if r["eval_mean_return"] is not None and r["random_mean_return"] is not None:
            gap = r["eval_mean_return"] - r["random_mean_return"]
        cells = (
            r["episode"],
            r["eval_mean_return"],
            r["eval_std"],
            r["random_mean_return"],
            gap,
            r["train_return"],
            r["n_exemplars"],
        )
        body.append("<tr>" + "".join(f"<td>{_e(_fmt(c, 2))}</td>" for c in cells) + "</tr>")
    paths = {name: run_dir / f"{name}.jsonl" for name in ("episodes", "evaluations")}
    records = {k: read_jsonl(p) if p.is_file() else [] for k, p in paths.items()}
    costs = []
    for name, label in (("episodes", "training"), ("evaluations", "evaluation")):
        cost = _sum(records[name], "cost_usd")
        n = len(records[name])
        costs.append((f"{label} cost", "-" if cost is None else f"${cost:,.4f}"))
        costs.append((f"{label} episodes", _fmt(n)))
        if cost is not None and n:
            costs.append((f"cost per {label} episode", f"${cost / n:,.5f}"))
        tokens = _sum(records[name], "input_tokens")
        costs.append(
            (f"{label} tokens in / out", f"{_fmt(tokens)} / {_fmt(_sum(records[name], 'output_tokens'))}")
        )
    return (
        "<h2>Training</h2><p class='note'>Evaluations on the held-out seeds, beside the random agent on "
        "the same seeds (the learning curve is plotted below).</p>"
        f"<table class='grid' id='evaluations'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody>"
        f"</table><div class='cards' style='margin-top:8px' id='training-costs'>{_dl(costs)}</div>"
    )


def _dl(items: Sequence[tuple[str, str]]) -> str:
    return "".join(f"<div class='kv'><span>{_e(k)}</span><b>{_e(v)}</b></div>" for k, v in items)


def render_report(
    run_dir: str | Path,
    *,
    max_frames_per_episode: int = MAX_FRAMES_PER_EPISODE,
    max_frames_total: int = MAX_FRAMES_TOTAL,
) -> str:
    """The report page of ``run_dir`` as an HTML string (see :func:`write_report`)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise ConfigError(f"{run_dir} is not a run directory: it has no config.json")
    for name, value in (
        ("max_frames_per_episode", max_frames_per_episode),
        ("max_frames_total", max_frames_total),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    require("matplotlib", extra="report")
    config = _read_json(run_dir / "config.json")
    spec = read_run_spec(config, run_dir / "config.json")
    # Bad records (unreadable, mistyped, an episode number outside the run) are skipped, and counted.
    step_records = read_jsonl_records(run_dir / "steps.jsonl")
    episode_records = read_episode_records(run_dir / "episodes.jsonl", spec.episodes)
    steps = [s for s in step_records.records if _step_episode_ok(s, spec.episodes)]
    episodes = episode_records.records
    skipped = step_records.skipped + len(step_records.records) - len(steps) + episode_records.skipped
    summary = _read_json(run_dir / "summary.json") if (run_dir / "summary.json").is_file() else {}
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    viewer = _viewer_data(
        run_dir,
        steps,
        episodes,
        max_frames_per_episode=max_frames_per_episode,
        max_frames_total=max_frames_total,
    )
    viewer["agent"] = spec.agent
    banner = ""
    if model.get("random_weights") is True:
        warning = summary.get("warning") if isinstance(summary, dict) else None
        banner = (
            "<div class='banner' role='alert'><b>RANDOM WEIGHTS.</b> This run's model "
            f"({_e(model.get('spec', '?'))}) has random weights: its moves are noise. These numbers measure "
            "the pipeline, not any real model's play."
            + (f"<br><small>{_e(warning)}</small>" if warning else "")
            + "</div>"
        )
    elif isinstance(model.get("label"), str) and model["label"]:
        banner = (
            "<div class='banner note' role='note'><b>What this model is:</b> "
            f"{_e(model.get('spec', '?'))}, a {_e(model['label'][:300])}.</div>"
        )
    title = f"{spec.game} played by {model.get('spec') or spec.agent}"
    plots_html = "".join(_plots(steps, episodes, _learning_curve(run_dir))) or "<p>No data to plot.</p>"
    nonce = secrets.token_urlsafe(16)
    parts = dict(
        title=_e(title),
        run_dir=_e(run_dir.resolve().name),
        banner=banner,
        summary=_dl(
            _summary(config, steps, episodes) + ([("bad records skipped", _fmt(skipped))] if skipped else [])
        ),
        settings=_dl(_settings(config, spec)),
        training=_training(run_dir),
        episodes=_episodes_table(episodes) if episodes else "<p>No finished episode.</p>",
        plots=plots_html,
        data=_json_for_script(viewer),
        nonce=nonce,
        css=_CSS,
        js=_JS,
    )
    # One pass over the template only: substituted text (run data included) is never scanned again.
    return re.sub(r"@@(\w+)@@", lambda m: parts[m.group(1)], _PAGE)


def write_report(
    run_dir: str | Path,
    *,
    max_frames_per_episode: int = MAX_FRAMES_PER_EPISODE,
    max_frames_total: int = MAX_FRAMES_TOTAL,
) -> Path:
    """Write ``report.html`` into ``run_dir``: summary, plots and a step-by-step episode viewer, in one
    self-contained file that opens offline in any browser. Returns its path.

    Example:
        >>> write_report("runs/demo")  # doctest: +SKIP
        PosixPath('runs/demo/report.html')

    Args:
        run_dir: a run directory (config.json, steps.jsonl, episodes.jsonl, videos/).
        max_frames_per_episode: frames embedded per episode at most (evenly subsampled beyond).
        max_frames_total: frames embedded over all episodes at most.

    Raises:
        ConfigError: not a run directory, or a bad cap.
        DependencyNotInstalled: matplotlib is missing (``pip install "atari-vlm[report]"``).
    """
    refuse_links(run_dir)  # the page is written only inside the run directory, never through a link
    page = render_report(
        run_dir, max_frames_per_episode=max_frames_per_episode, max_frames_total=max_frames_total
    )
    path = Path(run_dir) / "report.html"
    write_text_atomic(path, page)  # a fresh temp file renamed over: a link there is replaced, not followed
    return path


_CSS = """
:root { --fg:#111827; --muted:#6b7280; --line:#e5e7eb; --bg:#f9fafb; --accent:#2563eb; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
  background: var(--bg); }
main { max-width: 1100px; margin: 0 auto; padding: 20px 24px 60px; }
h1 { font-size: 22px; margin: 0 0 2px; } h2 { font-size: 17px; margin: 28px 0 10px; }
.sub { color: var(--muted); margin-bottom: 14px; }
.banner.note { background: #fffbeb; border-color: #d97706; color: #92400e; }
.banner { background: #fef2f2; border: 2px solid #dc2626; color: #991b1b; padding: 12px 16px;
  border-radius: 8px; margin: 12px 0 4px; font-size: 15px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(165px, 1fr)); gap: 8px; }
.kv { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 8px 10px; }
.kv span { display: block; color: var(--muted); font-size: 12px; }
.kv b { font-weight: 600; word-break: break-word; }
details { margin-top: 10px; } summary { cursor: pointer; color: var(--muted); }
table.grid { border-collapse: collapse; background: #fff; width: 100%; font-variant-numeric: tabular-nums; }
table.grid th, table.grid td { border: 1px solid var(--line); padding: 4px 8px; text-align: right; }
table.grid th { background: #f3f4f6; font-weight: 600; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(480px, 1fr)); gap: 12px; }
.plot { width: 100%; background: #fff; border: 1px solid var(--line); border-radius: 8px; }
.viewer { display: grid; grid-template-columns: 340px 1fr; gap: 16px; background: #fff;
  border: 1px solid var(--line); border-radius: 8px; padding: 14px; }
.controls { display: flex; gap: 8px; align-items: center; flex-wrap: wrap; margin-bottom: 10px; }
.controls input[type=range] { flex: 1; min-width: 200px; }
button, select { font: inherit; padding: 4px 10px; border: 1px solid #d1d5db; border-radius: 6px;
  background: #fff; cursor: pointer; }
button:hover { border-color: var(--accent); }
[hidden] { display: none !important; }  /* or the display rules below would show hidden parts */
#frame { width: 320px; height: 420px; image-rendering: pixelated; background: #000; border-radius: 4px;
  display: block; }
#frame-note, .note { color: var(--muted); font-size: 12px; margin-top: 6px; }
#step-label { font-weight: 600; font-size: 16px; min-width: 130px; }
.fields { display: grid; grid-template-columns: repeat(auto-fill, minmax(120px, 1fr)); gap: 6px; }
#answer { white-space: pre-wrap; word-break: break-word; background: #f3f4f6; border-radius: 6px;
  padding: 10px; min-height: 60px; max-height: 260px; overflow: auto; margin: 6px 0 0;
  font: 13px/1.4 ui-monospace, SFMono-Regular, Menlo, monospace; }
.bad { color: #b91c1c; } .good { color: #047857; }
kbd { border: 1px solid #d1d5db; border-radius: 4px; padding: 0 4px; font-size: 12px; }
.probs { display: grid; grid-template-columns: max-content 1fr 56px; gap: 3px 8px; align-items: center;
  margin-top: 8px; font-size: 12px; }
.probs .bar { background: #e5e7eb; border-radius: 3px; height: 12px; overflow: hidden; }
.probs .bar i { display: block; height: 100%; background: #93c5fd; }
.probs .chosen { font-weight: 700; } .probs .chosen .bar i { background: var(--accent); }
.sent { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px;
  margin-top: 12px; }
.sent h3 { font-size: 14px; margin: 4px 0 8px; }
.sent pre { white-space: pre-wrap; word-break: break-word; background: #f3f4f6; border-radius: 6px;
  padding: 8px; margin: 4px 0; font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, monospace;
  max-height: 320px; overflow: auto; }
.sent figure { display: inline-block; margin: 4px 8px 4px 0; vertical-align: top; }
.sent figure img { image-rendering: pixelated; border: 1px solid var(--line); max-width: 100%;
  min-width: 84px; background: #000; }
.sent figcaption { color: var(--muted); font-size: 11px; }
.role { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em;
  margin-top: 6px; }
"""

_JS = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("run-data").textContent);
  var col = {};
  data.columns.forEach(function (name, i) { col[name] = i; });
  var $ = function (id) { return document.getElementById(id); };
  var select = $("episode"), slider = $("slider"), img = $("frame");
  var ep = 0, pos = 0, systemOpen = false;
  var HASH = /^[0-9a-f]{16}$/;
  var OBTAINED = {
    scored: "scored (the likeliest legal action)",
    constrained: "constrained (the backend could only answer a legal action)",
    parsed: "parsed from the answer",
    fallback: "fallback (no legal action in the answer)",
    policy: "policy (an agent without a model)"
  };

  function text(id, value) { $(id).textContent = value; }
  function el(tag, cls, content) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (content !== undefined) node.textContent = content;
    return node;
  }
  function num(v, digits) {
    if (v === null || v === undefined || v === "") return "-";
    if (typeof v !== "number") return String(v);
    return Number.isInteger(v) ? String(v) : v.toFixed(digits === undefined ? 2 : digits);
  }
  function frameUrl(index) {
    var key = index >= 0 ? data.frames[index] : null;
    return typeof key === "string" && HASH.test(key) ? "frames/" + key + ".png" : null;
  }

  if (!data.episodes.length) {
    $("viewer").hidden = true;
    $("viewer-empty").hidden = false;
    return;
  }
  data.episodes.forEach(function (e, i) {
    var option = document.createElement("option");
    option.value = String(i);
    option.textContent = "episode " + e.episode + " (" + e.steps.length + " steps, return " +
      num(e["return"], 1) + (e.finished ? "" : ", unfinished") + ")";
    select.appendChild(option);
  });

  function showScreen(e, s, step) {
    var stored = frameUrl(s[col.screen]);
    var f = e.frame_of_step[pos];
    if (stored) {
      img.src = stored;
      img.hidden = false;
      text("frame-note", "The screen before step " + step + " (native 160x210; what the model was sent "
        + "is below).");
    } else if (f >= 0 && typeof e.images[f] === "string"
               && e.images[f].indexOf("data:image/jpeg;base64,") === 0) {
      img.src = e.images[f];
      img.hidden = false;
      var own = e.frame_step[pos] === pos + 1;
      text("frame-note", own ? "The screen before step " + step
        + " (native size; the model saw it with the run's image settings)."
        : "Nearest earlier embedded frame: the one before step " + e.frame_step[pos] + ".");
    } else {
      img.removeAttribute("src");
      img.hidden = true;
      text("frame-note", "No frame for this step.");
    }
  }

  function showProbs(s) {
    var box = $("probs");
    box.textContent = "";
    var probs = s[col.probs];
    $("probs-note").hidden = !!probs;
    if (!probs) return;
    data.actions.forEach(function (name, i) {
      var p = probs[i];
      if (typeof p !== "number") return;
      var chosen = name === s[col.action_name];
      var label = el("span", chosen ? "chosen" : "", name);
      var bar = el("span", "bar" + (chosen ? " chosen" : ""));
      var fill = el("i");
      fill.style.width = Math.max(0, Math.min(100, p * 100)).toFixed(1) + "%";
      bar.appendChild(fill);
      box.appendChild(label);
      box.appendChild(bar);
      box.appendChild(el("span", chosen ? "chosen" : "", (p * 100).toFixed(1) + "%"));
    });
  }

  function showSent(e, s) {
    var box = $("sent-parts");
    box.textContent = "";
    var sent = s[col.sent];
    if (!sent) {
      box.appendChild(el("p", "note", data.agent === "vlm"
        ? "No request was recorded for this step (a run recorded before atari-vlm kept requests)."
        : "Nothing was sent: this agent has no model."));
      return;
    }
    var system = sent[0];
    if (system >= 0 && typeof data.systems[system] === "string") {
      var previous = pos > 0 ? e.steps[pos - 1][col.sent] : null;
      var changed = pos > 0 && previous && previous[0] !== system;
      var details = el("details");
      details.open = systemOpen;
      details.addEventListener("toggle", function () { systemOpen = details.open; });
      details.appendChild(el("summary", "", "system prompt (" + data.systems[system].length + " characters)"
        + (changed ? ": changed at this step" : "")));
      details.appendChild(el("pre", "", data.systems[system]));
      box.appendChild(details);
    }
    var images = 0;
    sent[1].forEach(function (message) {
      box.appendChild(el("div", "role", String(message[0])));
      message[1].forEach(function (part) {
        if (part[0] === 0) {
          box.appendChild(el("pre", "part", part[1].map(function (i) { return String(data.texts[i]); })
            .join("\n")));
          return;
        }
        images += 1;
        var figure = el("figure", "part");
        var url = frameUrl(part[1]);
        if (url) {
          var image = el("img");
          image.loading = "lazy";
          image.alt = "image " + images + " as sent";
          image.addEventListener("load", function () {  // a small image at 2x (the caption gives its size)
            if (image.naturalWidth < 160) image.style.width = String(image.naturalWidth * 2) + "px";
          });
          image.src = url;
          figure.appendChild(image);
        }
        figure.appendChild(el("figcaption", "", "image " + images + ": " + String(data.texts[part[2]])
          + (url ? "" : " (not kept: the run was played with --no-frames)")));
        box.appendChild(figure);
      });
    });
  }

  function show() {
    var e = data.episodes[ep];
    var n = e.steps.length;
    slider.max = String(Math.max(0, n - 1));
    slider.value = String(pos);
    text("frames-note", e.frames_note);
    if (!n) { text("step-label", "no steps"); return; }
    var s = e.steps[pos];
    var step = s[col.step];
    text("step-label", "step " + step + " / " + n);
    showScreen(e, s, step);
    text("f-action", s[col.action_name] + " (" + num(s[col.action]) + ")");
    var how = s[col.obtained];
    if (typeof how !== "string") how = s[col.parsed] === true ? "parsed" : "fallback";
    text("f-obtained", OBTAINED[how] || String(how));
    $("f-obtained").className = how === "fallback" ? "bad" : "good";
    text("f-reward", num(s[col.reward], 1));
    text("f-return", num(s[col["return"]], 1));
    text("f-lives", num(s[col.lives]));
    var images = s[col.image_tokens];
    text("f-tokens", num(s[col.input_tokens]) + " / " + num(s[col.output_tokens]) +
      (images === null || images === undefined ? "" : " / " + num(images)) +
      (s[col.usage_estimated] === true ? " (estimated: the server's count was not believable)" : ""));
    text("f-latency", s[col.latency_s] === null ? "-" : num(s[col.latency_s], 3) + " s");
    text("f-retries", num(s[col.retries]));
    var cost = s[col.cost_usd];
    text("f-cost", cost === null || cost === undefined ? "-" : "$" + num(cost, 5));
    var answer = s[col.text];
    if (answer === null || answer === undefined || answer === "") {
      answer = data.agent === "random" ? "(no answer: the random agent has no model)" : "(empty answer)";
    }
    text("answer", String(answer) +
      (s[col.answer_truncated] === true ? "\n[answer cut: it was longer than the backend keeps]" : ""));
    showProbs(s);
    showSent(e, s);
  }

  function go(delta) {
    var n = data.episodes[ep].steps.length;
    pos = Math.min(Math.max(0, pos + delta), Math.max(0, n - 1));
    show();
  }

  select.addEventListener("change", function () { ep = Number(select.value); pos = 0; show(); });
  slider.addEventListener("input", function () { pos = Number(slider.value); show(); });
  $("prev").addEventListener("click", function () { go(-1); });
  $("next").addEventListener("click", function () { go(1); });
  document.addEventListener("keydown", function (event) {
    if (event.target === slider || event.target === select) return;  // they handle arrows themselves
    if (event.key === "ArrowRight") { go(1); event.preventDefault(); }
    else if (event.key === "ArrowLeft") { go(-1); event.preventDefault(); }
    else if (event.key === "Home") { pos = 0; show(); }
    else if (event.key === "End") { go(1e9); }
  });
  show();
})();
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy"
  content="default-src 'none'; img-src data: 'self'; style-src 'unsafe-inline'; \
script-src 'nonce-@@nonce@@'; base-uri 'none'; form-action 'none'">
<title>@@title@@</title>
<style>@@css@@</style>
</head>
<body>
<main>
<h1>@@title@@</h1>
<div class="sub">atari-vlm run report &middot; @@run_dir@@</div>
@@banner@@
<h2>Summary</h2>
<div class="cards">@@summary@@</div>
<details><summary>Settings</summary><div class="cards" style="margin-top:8px">@@settings@@</div></details>
@@training@@
<h2>Episodes</h2>
@@episodes@@
<h2>Plots</h2>
<div class="plots">@@plots@@</div>
<h2>Episode viewer</h2>
<p id="viewer-empty" hidden>No decisions were recorded.</p>
<div id="viewer">
<div class="viewer">
  <div>
    <img id="frame" alt="the screen before this step">
    <div id="frame-note"></div>
  </div>
  <div>
    <div class="controls">
      <select id="episode" aria-label="episode"></select>
      <button id="prev" type="button" title="previous step (left arrow)">&larr; prev</button>
      <span id="step-label"></span>
      <button id="next" type="button" title="next step (right arrow)">next &rarr;</button>
    </div>
    <div class="controls"><input id="slider" type="range" min="0" max="0" value="0" aria-label="step"></div>
    <div class="fields">
      <div class="kv"><span>action</span><b id="f-action"></b></div>
      <div class="kv"><span>obtained</span><b id="f-obtained"></b></div>
      <div class="kv"><span>reward</span><b id="f-reward"></b></div>
      <div class="kv"><span>return so far</span><b id="f-return"></b></div>
      <div class="kv"><span>lives</span><b id="f-lives"></b></div>
      <div class="kv"><span>tokens in / out / image</span><b id="f-tokens"></b></div>
      <div class="kv"><span>latency</span><b id="f-latency"></b></div>
      <div class="kv"><span>retries</span><b id="f-retries"></b></div>
      <div class="kv"><span>cost</span><b id="f-cost"></b></div>
    </div>
    <div class="note">The model's answer (shown as plain text):</div>
    <pre id="answer"></pre>
    <div class="note">Probability of each legal action:</div>
    <div class="probs" id="probs"></div>
    <div class="note" id="probs-note">Not known for this step (the backend gave none).</div>
    <div class="note" id="frames-note"></div>
    <div class="note">Keys: <kbd>&larr;</kbd> <kbd>&rarr;</kbd> step,
      <kbd>Home</kbd> <kbd>End</kbd> jump.</div>
  </div>
</div>
<div class="sent" id="sent">
  <h3>What the model was sent at this step (images as it received them)</h3>
  <div id="sent-parts"></div>
</div>
</div>
</main>
<script type="application/json" id="run-data">@@data@@</script>
<script nonce="@@nonce@@">@@js@@</script>
</body>
</html>
"""
