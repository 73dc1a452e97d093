import base64

import cv2
import numpy as np
import pytest

from atari_vlm import imaging


def frame(h=210, w=160, value=None):
    rng = np.random.default_rng(0)
    if value is not None:
        return np.full((h, w, 3), value, np.uint8)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_resize_takes_height_then_width_and_none_keeps_the_frame():
    f = frame()
    assert imaging.resize(f, (105, 80)).shape == (105, 80, 3)
    assert imaging.resize(f, (420, 320)).shape == (420, 320, 3)
    assert imaging.resize(f, None) is f


def test_grayscale_and_back():
    g = imaging.to_grayscale(frame(value=128))
    assert g.shape == (210, 160) and int(g[0, 0]) == 128
    assert imaging.to_rgb(g).shape == (210, 160, 3)


@pytest.mark.parametrize(
    ("n", "shape"), [(1, (1, 1)), (2, (1, 2)), (3, (2, 2)), (4, (2, 2)), (5, (2, 3)), (9, (3, 3))]
)
def test_grid_shape(n, shape):
    assert imaging.grid_shape(n) == shape


def test_grid_places_frames_row_by_row_oldest_first():
    frames = [frame(10, 8, value=v) for v in (10, 20, 30)]
    grid = imaging.make_grid(frames, border=2)
    assert grid.shape == (22, 18, 3)
    assert grid[0, 0, 0] == 10 and grid[0, 10, 0] == 20 and grid[12, 0, 0] == 30
    assert grid[12, 10, 0] == 255  # the empty cell and the borders are white
    assert grid[10, 0, 0] == 255


def test_encodings_round_trip():
    f = frame(value=77)
    for fmt in ("jpeg", "png"):
        data = imaging.encode(f, fmt)
        back = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        assert back.shape == f.shape and abs(int(back[5, 5, 0]) - 77) <= 2
    url = imaging.data_url(f, "png")
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="image format must be one of"):
        imaging.encode(f, "gif")


def test_to_pil_modes():
    assert imaging.to_pil(frame()).mode == "RGB"
    assert imaging.to_pil(imaging.to_grayscale(frame())).mode == "L"
