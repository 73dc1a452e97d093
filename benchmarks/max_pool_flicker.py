"""What a single frame hides: objects the model sees only because of max-pooling (issue: run spec, 3).

Atari games draw some sprites on alternate frames (Ms. Pac-Man's ghosts, Space Invaders' shots and
invaders' rows). The env's default observation is the pixel-wise max of the last two emulator frames
of each 4-frame skip (``MaxPoolSkip``); without it (``--no-max-pool``) the model gets the last frame.
This plays seeded random games frame by frame and counts, per decision, the objects its last frame
hides: 8-connected blobs of at least ``--min-pixels`` pixels that the frame before and the frame after
both draw, the same, and the last frame does not (blinking, not motion). Max-pooling the last two
frames shows them.

    python benchmarks/max_pool_flicker.py --games MsPacman SpaceInvaders Pong --decisions 500 --seeds 0 1 2

Pong is the control: it draws everything on every frame.
"""

from __future__ import annotations

import argparse
import dataclasses

import cv2
import gymnasium as gym
import numpy as np
from _common import machine, median, print_table

from atari_vlm.env import ale_env
from atari_vlm.spec import RunSpec


def blinking_objects(before: np.ndarray, frame: np.ndarray, after: np.ndarray, min_pixels: int) -> int:
    """Blobs drawn in the frames before and after ``frame`` but not in it: flicker, not motion (a
    moving sprite is not in the same place two frames apart)."""
    shown_by_pooling = np.any(np.maximum(before, frame) != frame, axis=2)  # what the max adds to ``frame``
    mask = (np.all(before == after, axis=2) & shown_by_pooling).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    return int(np.sum(stats[1:, cv2.CC_STAT_AREA] >= min_pixels)) if count > 1 else 0


def play(game: str, seed: int, decisions: int, min_pixels: int) -> tuple[int, int, int]:
    """(decisions played, decisions whose last frame lacks a blinking object, such objects in all).

    Every emulator frame is kept (frame skip 1, the action held for the skip as the env does), so the
    frame after a decision's last one is known: the last frame alone hides an object that the frame
    before and the frame after both draw, and the pooled frame (max of the last two) shows it."""
    spec = RunSpec.build(game=game).env
    skip = spec.frame_skip
    env = ale_env(dataclasses.replace(spec, frame_skip=1))
    frame, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    frames = [frame]
    played = with_hidden = hidden = 0
    for _ in range(decisions):
        action = env.action_space.sample()
        for _ in range(skip):
            frame, _, terminated, truncated, _ = env.step(action)
            frames.append(frame)
            if terminated or truncated:
                break
        if terminated or truncated:
            frame, _ = env.reset()
            frames = [frame]
            continue
        # frames[-2] is the decision's last-but-one frame, frames[-1] its last; the next frame is
        # the first of the next decision, played with the same action here (sticky actions aside).
        after, *_ = env.step(action)
        before, last = frames[-2], frames[-1]
        found = blinking_objects(before, last, after, min_pixels)
        frames = [after]
        played += 1
        with_hidden += found > 0
        hidden += found
    env.close()
    return played, with_hidden, hidden


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--games", nargs="+", default=["MsPacman", "SpaceInvaders", "Pong"])
    parser.add_argument("--decisions", type=int, default=500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--min-pixels", type=int, default=4)
    args = parser.parse_args()
    gym.logger.min_level = 40
    print(f"# max_pool_flicker: {args.decisions} random decisions per seed, seeds {args.seeds}")
    print(f"# {machine()}")
    rows = []
    for game in args.games:
        per_seed = [play(game, seed, args.decisions, args.min_pixels) for seed in args.seeds]
        share = [w / p for p, w, _ in per_seed]
        mean_hidden = [h / p for p, _, h in per_seed]
        played = sum(p for p, _, _ in per_seed)
        rows.append((game, played, median(share), min(share), max(share), median(mean_hidden)))
    print_table(
        ["game", "decisions", "share of decisions whose last frame hides an object (median)", "min", "max",
         "hidden objects per decision (median)"],
        rows,
    )


if __name__ == "__main__":
    main()
