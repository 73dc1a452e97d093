"""What each decision sent, kept small: images once each as PNG named by content hash, system prompts
once each as text, and per decision a record of the request's parts in order that refers to them.

A 1000-step run repeats most of what it sends (the system prompt, the exemplars, a screen that did
not change): ``steps.jsonl`` holds only hashes for those, ``frames/<hash>.png`` and
``prompts/<hash>.txt`` hold each distinct one once, and the viewer loads an image when it shows it.

Files are written inside the run directory only: the store's folders must be real folders (not
links), and each file goes to a temp name opened with ``O_EXCL | O_NOFOLLOW`` and is renamed into
place (a rename replaces a link, never writes through it).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from atari_vlm.errors import ConfigError
from atari_vlm.models.base import ImagePart, Request, TextPart

__all__ = ["FRAMES_DIR", "HASH", "PROMPTS_DIR", "FrameStore", "content_hash", "sent_record"]

FRAMES_DIR = "frames"
PROMPTS_DIR = "prompts"
HASH = re.compile(r"[0-9a-f]{16}")
"""A stored item's name: 64 bits of BLAKE2b (a collision in a million frames: about 1 in 3e7)."""


def content_hash(data: np.ndarray | str) -> str:
    """The name an image (its dtype, shape and pixels) or a text is stored under."""
    h = hashlib.blake2b(digest_size=8)
    if isinstance(data, str):
        h.update(b"text:" + data.encode("utf-8", "surrogatepass"))
    else:
        h.update(f"{data.dtype.str}{data.shape}:".encode())
        h.update(np.ascontiguousarray(data).data)
    return h.hexdigest()


class FrameStore:
    """The content-addressed store of one run directory (shared by every worker of the run).

    Example:
        >>> store = FrameStore(Path("runs/demo"))  # doctest: +SKIP
        >>> store.put_image(frame)  # doctest: +SKIP
        '3f2a9c0d1e4b5a69'
    """

    def __init__(self, run_path: str | Path, *, images: bool = True) -> None:
        self.root = Path(run_path)
        self.images = images  # False (``--no-frames``): images are recorded by shape only
        self.frames = self.root / FRAMES_DIR
        self.prompts = self.root / PROMPTS_DIR
        self._known: dict[Path, set[str]] = {}

    def _folder(self, folder: Path) -> set[str]:
        """The names already in ``folder`` (made on first use; a link in its place is refused)."""
        known = self._known.get(folder)
        if known is None:
            if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
                raise ConfigError(
                    f"{folder} is a link or a file, not a folder: remove it, or choose another --out"
                )
            folder.mkdir(parents=True, exist_ok=True)
            known = self._known[folder] = {
                p.name for p in os.scandir(folder) if p.is_file(follow_symlinks=False)
            }
        return known

    def _put(self, folder: Path, name: str, payload: Any) -> None:
        known = self._folder(folder)
        if name in known:
            return
        data = payload() if callable(payload) else payload
        tmp = folder / f".{name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, folder / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        known.add(name)

    def put_image(self, pixels: np.ndarray) -> str:
        """Store an (H, W) or (H, W, 3) uint8 image once; returns its hash."""
        import cv2

        key = content_hash(pixels)

        def png() -> bytes:
            image = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR) if pixels.ndim == 3 else pixels
            ok, encoded = cv2.imencode(".png", image)
            if not ok:
                raise ValueError(f"cannot encode a {pixels.shape} image as PNG")
            return encoded.tobytes()

        self._put(self.frames, f"{key}.png", png)
        return key

    def put_text(self, text: str) -> str:
        """Store a text (a system prompt) once; returns its hash."""
        key = content_hash(text)
        self._put(self.prompts, f"{key}.txt", lambda: text.encode("utf-8", "replace"))
        return key

    def files(self) -> dict[str, bytes]:
        """Every file of the store, by its path in the run directory (a Ray worker sends them home)."""
        out = {}
        for folder in (self.frames, self.prompts):
            for name in sorted(self._known.get(folder, ())):
                out[f"{folder.name}/{name}"] = (folder / name).read_bytes()
        return out

    def put_file(self, relative: str, data: bytes) -> None:
        """Store a file :meth:`files` gave (another process's store): only a hash-named file of a
        store folder is taken."""
        folder, _, name = relative.partition("/")
        stem, _, ext = name.partition(".")
        if (folder, ext) not in ((FRAMES_DIR, "png"), (PROMPTS_DIR, "txt")) or not HASH.fullmatch(stem):
            raise ValueError(f"not a frame store file: {relative!r}")
        self._put(self.root / folder, name, data)


def sent_record(request: Request, store: FrameStore) -> dict[str, Any]:
    """What ``request`` sent, for its step record: the system prompt by hash, then every other message's
    parts in order, text verbatim and each image by hash with its shape (by shape alone when the store
    keeps no images)."""
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for message in request.messages:
        if message.role == "system":
            system.append(message.joined_text)
            continue
        parts: list[dict[str, Any]] = []
        for part in message.parts:
            if isinstance(part, TextPart):
                parts.append({"text": part.text})
            elif isinstance(part, ImagePart):
                key = store.put_image(part.pixels) if store.images else None
                parts.append({"image": key, "shape": list(part.pixels.shape)})
        messages.append({"role": message.role, "parts": parts})
    return {"system": store.put_text("\n".join(system)) if system else None, "messages": messages}
