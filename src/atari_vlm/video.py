"""MP4 videos of episodes, written frame by frame through the ffmpeg binary that imageio-ffmpeg ships.

Frames stream to ffmpeg as they come, so a long episode never sits in memory. They go to a ``.part``
file that becomes the ``.mp4`` only when the episode ends (:meth:`VideoWriter.close`); an episode cut
short (an error, a full disk, an interrupt) discards it (:meth:`VideoWriter.abort`), and a crash leaves
the ``.part``, which a resumed run removes. A video read back is data from outside: its file size and
frame size are checked before a frame is decoded.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from atari_vlm.errors import ConfigError

SCREEN_SHAPE = (210, 160)
"""An Atari screen, height x width: what episode videos show, scaled up."""

MAX_VIDEO_SCALE = 8  # episode videos are written at scale 2; a bigger one is not an episode video
MAX_VIDEO_BYTES = 2**30  # an hour-long episode at scale 2 is ~100 MB of H.264
MAX_VIDEO_FRAMES = 1_000_000  # beyond any episode (ALE caps one at 108,000 frames)


class VideoWriter:
    """Write RGB frames (H, W, 3) to an H.264 mp4, scaled up by ``scale`` for viewing.

    Example:
        >>> with VideoWriter("ep.mp4", fps=15) as video:  # doctest: +SKIP
        ...     video.add(frame)
    """

    def __init__(self, path: str | Path, *, fps: float = 15.0, scale: int = 2, overlay: bool = False):
        self.path = Path(path)
        self.fps = fps
        self.scale = scale
        self.overlay = overlay  # a caption strip under each frame (the action taken, the reward)
        self._part = self.path.with_name(self.path.name + ".part")
        self._writer: Any = None
        self.frames = 0

    def add(self, frame: np.ndarray, caption: str = "") -> None:
        if self.scale != 1:
            frame = cv2.resize(
                frame,
                (frame.shape[1] * self.scale, frame.shape[0] * self.scale),
                interpolation=cv2.INTER_NEAREST,
            )
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
        if self.overlay:
            frame = _with_caption(frame, caption)
        if self._writer is None:
            import imageio_ffmpeg

            self._start_part()
            h, w = frame.shape[:2]
            self._writer = imageio_ffmpeg.write_frames(
                str(self._part),
                (w, h),
                fps=self.fps,
                codec="libx264",
                macro_block_size=2,
                output_params=["-f", "mp4"],
                ffmpeg_log_level="error",
            )
            self._writer.send(None)
        self._writer.send(np.ascontiguousarray(frame))
        self.frames += 1

    def _start_part(self) -> None:
        if self._part.is_symlink():  # ffmpeg would write through it, out of the run directory
            raise ConfigError(f"{self._part} is a symbolic link; remove it: a video is written only in place")

    def close(self) -> Path | None:
        """Finish the file and give it its final name; returns its path, or None when no frame was added."""
        if self._writer is None:
            return None
        writer, self._writer = self._writer, None
        writer.close()
        os.replace(self._part, self.path)
        return self.path

    def abort(self) -> None:
        """Stop without a video: the episode did not end, so no ``.mp4`` may look as if it had."""
        writer, self._writer = self._writer, None
        try:
            if writer is not None:
                writer.close()
        except (OSError, RuntimeError):
            pass  # ffmpeg failed (the full disk that cut the episode short): its output is dropped anyway
        finally:
            self._part.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


CAPTION_HEIGHT = 24


def _with_caption(frame: np.ndarray, caption: str) -> np.ndarray:
    """The frame above a black strip holding ``caption`` (below, so the game stays uncovered)."""
    strip = np.zeros((CAPTION_HEIGHT, frame.shape[1], 3), np.uint8)
    text = caption.encode("ascii", "replace").decode("ascii")  # cv2's font draws ASCII only
    cv2.putText(strip, text, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return np.vstack([frame, strip])


def read_video_info(path: str | Path) -> dict[str, Any]:
    """Frame count, size and fps of a video, read back through ffmpeg (used to check what was written)."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    count = sum(1 for _ in reader)
    return {"frames": count, "size": tuple(meta["size"]), "fps": meta["fps"]}


def read_native_frames(path: str | Path, *, max_frames: int = MAX_VIDEO_FRAMES) -> Iterator[np.ndarray]:
    """The native 210x160 RGB screens of an episode video (stored scaled up, maybe with a caption strip),
    at most ``max_frames`` of them.

    The file size, the frame size (a scale of at most MAX_VIDEO_SCALE, a caption strip of
    CAPTION_HEIGHT at most) and the declared frame count are checked from the header, before a frame
    is decoded: a small file of huge frames is refused, not decoded.

    Raises:
        ConfigError: the video is too large, or is not a scaled Atari screen.
    """
    import imageio_ffmpeg

    size = os.stat(path).st_size
    if size > MAX_VIDEO_BYTES:
        raise ConfigError(f"{path}: {size} bytes, more than the {MAX_VIDEO_BYTES} an episode video may hold")
    reader = imageio_ffmpeg.read_frames(str(path))
    try:
        meta = next(reader)
        width, height = meta["size"]
        scale = width // SCREEN_SHAPE[1]
        screen = scale * SCREEN_SHAPE[0]
        if (
            not 1 <= scale <= MAX_VIDEO_SCALE
            or width != scale * SCREEN_SHAPE[1]
            or height not in (screen, screen + CAPTION_HEIGHT)
        ):
            raise ConfigError(
                f"{path}: a {width}x{height} video is not a 160x210 Atari screen scaled 1 to "
                f"{MAX_VIDEO_SCALE} times (with at most a {CAPTION_HEIGHT}-pixel caption strip)"
            )
        declared = meta.get("nframes")
        if isinstance(declared, (int, float)) and declared != float("inf") and declared > MAX_VIDEO_FRAMES:
            raise ConfigError(f"{path}: declares {declared} frames, more than the {MAX_VIDEO_FRAMES} allowed")
        for index, data in enumerate(reader):
            if index >= max_frames:
                break
            frame = np.frombuffer(data, np.uint8).reshape(height, width, 3)[: scale * SCREEN_SHAPE[0]]
            # The mean of each scale x scale block undoes the upscale and averages out codec noise.
            blocks = frame.reshape(SCREEN_SHAPE[0], scale, SCREEN_SHAPE[1], scale, 3).astype(np.float32)
            yield np.rint(blocks.mean(axis=(1, 3))).astype(np.uint8)
    finally:
        reader.close()
