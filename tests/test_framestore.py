"""The frame store's hand-over between processes (a Ray worker's store sent to the driver's run)."""

from __future__ import annotations

import numpy as np
import pytest

from atari_vlm.framestore import FrameStore


def test_files_move_from_one_store_to_another_and_only_store_files(tmp_path):
    worker = FrameStore(tmp_path / "worker")
    image = worker.put_image(np.full((3, 5, 3), 7, np.uint8))
    text = worker.put_text("system prompt")
    assert worker.put_image(np.full((3, 5, 3), 7, np.uint8)) == image  # the same pixels, once
    files = worker.files()
    assert sorted(files) == [f"frames/{image}.png", f"prompts/{text}.txt"]
    driver = FrameStore(tmp_path / "driver")
    for relative, data in files.items():
        driver.put_file(relative, data)
    assert (tmp_path / "driver" / "prompts" / f"{text}.txt").read_text() == "system prompt"
    assert (tmp_path / "driver" / "frames" / f"{image}.png").read_bytes() == files[f"frames/{image}.png"]
    for bad in (
        "../config.json",
        "frames/../../x.png",
        "frames/ABCDEF0123456789.png",
        "videos/a.mp4",
        f"frames/{image}.txt",
        f"prompts/{text}.png",
    ):
        with pytest.raises(ValueError, match="not a frame store file"):
            driver.put_file(bad, b"x")
    assert not (tmp_path / "config.json").exists()


class ScriptedVLM:
    name = "scripted"

    async def generate(self, request):
        from atari_vlm.models.base import Completion, Usage

        return Completion("ACTION: FIRE", Usage(10, 2))

    async def aclose(self) -> None:
        pass


def test_a_run_records_images_as_the_model_received_them(tmp_path):
    """Resized, grayscale, a frame stack sent as a sequence, and the exemplars first: each part as sent."""
    import asyncio

    import cv2

    from atari_vlm.env import AtariVLMEnv
    from atari_vlm.memory import Exemplar
    from atari_vlm.rollout import EpisodeSeeds, play_episode
    from atari_vlm.rundir import RunDir, read_jsonl, run_record
    from atari_vlm.spec import RunSpec
    from atari_vlm.workers import vlm_agent

    spec = RunSpec.build(
        game="Pong",
        max_steps=3,
        resize_shape=(84, 84),
        grayscale=True,
        frame_stack=2,
        frame_layout="sequence",
    )
    env = AtariVLMEnv(spec.env, spec.observation)
    example = np.arange(84 * 84, dtype=np.uint8).reshape(84, 84)
    agent = vlm_agent(
        spec, env.action_names, ScriptedVLM(), exemplars=[Exemplar(example, "", "FIRE", "scored")]
    )
    run = RunDir(tmp_path / "run").open(run_record(spec, kind="play"), spec)
    store = FrameStore(run.path)
    try:
        asyncio.run(play_episode(env, agent, episode=0, seeds=EpisodeSeeds(0, 0), run=run, frames=store))
    finally:
        run.close()
        env.close()
    steps = read_jsonl(run.path / "steps.jsonl")
    assert len(steps) == 3
    for s in steps:
        parts = s["sent"]["messages"][0]["parts"]
        kinds = [("text", p["text"][:12]) if "text" in p else ("image", tuple(p["shape"])) for p in parts]
        assert kinds == [
            ("text", "Examples fro"),
            ("image", (84, 84)),
            ("text", "Example 1: A"),
            ("text", "Now the curr"),
            ("text", "The screens "),
            ("image", (84, 84)),
            ("image", (84, 84)),
            ("text", kinds[-1][1]),
        ]
        stored = cv2.imread(str(run.path / "frames" / f"{parts[1]['image']}.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(stored, example)  # the exemplar, exactly as shown
    first, second = (s["sent"]["messages"][0]["parts"] for s in steps[:2])
    assert second[5]["image"] == first[6]["image"]  # the stack slides: the newest frame becomes the older one
