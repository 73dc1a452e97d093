"""Test doubles that are real enough to exercise the network paths (stdlib only, loopback only).

Names are imported lazily so that ``python -m atari_vlm.testing.openai_server`` does not import the
module twice (runpy warns when a package has already imported the module it is about to run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from atari_vlm.testing.openai_server import FakeOpenAIServer, Fault, RecordedRequest, serve_in_thread

__all__ = ["FakeOpenAIServer", "Fault", "RecordedRequest", "serve_in_thread"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from atari_vlm.testing import openai_server

        return getattr(openai_server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
