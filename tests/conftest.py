"""Test-wide settings: everything offline, every cache in a temp dir of this session."""

import os
import tempfile

# Set before any test imports transformers or spawns the CLI, so children inherit them too.
os.environ.setdefault("ATARI_VLM_CACHE", tempfile.mkdtemp(prefix="atari-vlm-test-cache-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
