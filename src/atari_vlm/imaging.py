"""Image preparation: resize, grayscale, frame grids and encodings.

This is the one place where the cost of an image is decided (its size, colour, layout and encoding).
Everything works on uint8 numpy arrays; cv2 does the pixel work because it costs well under one
emulator step per frame, where PIL's PNG encoder costs several.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np
from PIL import Image

ImageFormat = Literal["jpeg", "png"]
IMAGE_FORMATS: tuple[str, ...] = ("jpeg", "png")


def resize(frame: np.ndarray, shape: tuple[int, int] | None) -> np.ndarray:
    """Resize ``frame`` to ``shape`` = (height, width); ``None`` keeps it as it is.

    Area interpolation when shrinking keeps thin sprites (Pong's ball is 2 pixels wide) visible.
    """
    if shape is None or frame.shape[:2] == tuple(shape):
        return frame
    height, width = shape
    shrinking = height * width < frame.shape[0] * frame.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_NEAREST
    return cv2.resize(frame, (width, height), interpolation=interpolation)


def to_grayscale(frame: np.ndarray) -> np.ndarray:
    """RGB (H, W, 3) -> luminance (H, W)."""
    if frame.ndim == 2:
        return frame
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def to_rgb(frame: np.ndarray) -> np.ndarray:
    """Grayscale (H, W) -> RGB (H, W, 3); RGB passes through. Models and codecs want 3 channels."""
    if frame.ndim == 3:
        return frame
    return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)


def grid_shape(n: int) -> tuple[int, int]:
    """Rows and columns for ``n`` frames: as square as possible, filled row by row."""
    if n < 1:
        raise ValueError(f"a grid needs at least one frame, got {n}")
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    return rows, cols


def make_grid(frames: Sequence[np.ndarray], border: int = 2) -> np.ndarray:
    """Lay frames (oldest first) out in one image, row by row, separated by white borders."""
    if not frames:
        raise ValueError("make_grid needs at least one frame")
    if len(frames) == 1:
        return frames[0]
    rows, cols = grid_shape(len(frames))
    h, w = frames[0].shape[:2]
    channels = frames[0].shape[2:]
    out = np.full(
        (rows * h + (rows - 1) * border, cols * w + (cols - 1) * border, *channels),
        255,
        dtype=np.uint8,
    )
    for i, frame in enumerate(frames):
        r, c = divmod(i, cols)
        y, x = r * (h + border), c * (w + border)
        out[y : y + h, x : x + w] = frame
    return out


def encode(pixels: np.ndarray, fmt: ImageFormat = "jpeg", quality: int = 90) -> bytes:
    """Encode an RGB or grayscale uint8 array as JPEG or PNG bytes."""
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"image format must be one of {IMAGE_FORMATS}, got {fmt!r}")
    bgr = pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    if fmt == "jpeg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    else:
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # pragma: no cover - cv2 only fails on invalid arrays, which the types exclude
        raise RuntimeError(f"cv2 failed to encode a {pixels.shape} image as {fmt}")
    return buf.tobytes()


def data_url(pixels: np.ndarray, fmt: ImageFormat = "jpeg", quality: int = 90) -> str:
    """A ``data:image/...;base64,`` URL, the form OpenAI-style APIs accept inline."""
    mime = "image/jpeg" if fmt == "jpeg" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(encode(pixels, fmt, quality)).decode('ascii')}"


def to_pil(pixels: np.ndarray) -> Image.Image:
    """A PIL image (RGB, or L for grayscale) sharing nothing with the array."""
    return Image.fromarray(np.ascontiguousarray(pixels), mode=None)
