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
