"""Tiny random-weight checkpoints, built offline in seconds.

Tests and the CLI's ``--model demo`` need a real Hugging Face checkpoint directory (config, safetensors
weights, tokenizer, image processor, chat template) without a download. Each family here is the real
architecture at toy size: a byte-level BPE tokenizer trained on a built-in corpus (so Atari action
words are single tokens), the family's special tokens and chat-template style, a 1-2 layer model with
a small vision tower, and the family's processor. The weights are random: the outputs are noise, but
every code path (templating, image tokens, batching, decoding) is the one a real model takes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atari_vlm.errors import ConfigError, require

__all__ = [
    "DEMO_FAMILY",
    "DEMO_VERSION",
    "TINY_FAMILIES",
    "TRANSFORMERS_TESTED",
    "build_tiny_checkpoint",
    "check_transformers",
    "demo_cache_root",
    "demo_checkpoint",
    "tested_range",
]

ACTION_WORDS: tuple[str, ...] = (
    "NOOP", "FIRE", "UP", "RIGHT", "LEFT", "DOWN", "UPRIGHT", "UPLEFT", "DOWNRIGHT", "DOWNLEFT",
    "UPFIRE", "RIGHTFIRE", "LEFTFIRE", "DOWNFIRE", "UPRIGHTFIRE", "UPLEFTFIRE", "DOWNRIGHTFIRE",
    "DOWNLEFTFIRE",
)  # fmt: skip

_CORPUS = [
    "You are playing an Atari 2600 game. Look at the frames and choose one action.",
    "Reply with ACTION: followed by one of the legal actions.",
    "Legal actions: " + ", ".join(ACTION_WORDS) + ".",
    *(f"ACTION: {word}" for word in ACTION_WORDS),
    "The paddle moves UP and DOWN. The ball bounces off the walls. Score points to win.",
    "Breakout: move the paddle LEFT or RIGHT, press FIRE to launch the ball and break the bricks.",
    "Space Invaders: shoot the aliens with FIRE, dodge their bullets by moving LEFT and RIGHT.",
    "Pong: the opponent is on the left, your paddle is on the right. Think step by step.",
    "The previous frames are oldest first. The last frame is the current screen.",
    "0 1 2 3 4 5 6 7 8 9 10 score lives reward frame step episode player enemy ball paddle",
]

DEMO_VERSION = "1"
DEMO_MARKER = "atari_vlm_demo.json"
DEMO_README = "DEMO_README.txt"
# The transformers versions the tiny families are tested with: [low, high). The configs, processors
# and their keyword arguments here are those of transformers 5 (5.23.0 and 5.25.0 ran the tests);
# pyproject's `local` extra pins the same range (a test checks they agree).
TRANSFORMERS_TESTED: tuple[str, str] = ("5.23", "6")


# --- chat templates, each in its family's real style (rendering content parts in order) ---

_LLAVA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] + ' ' }}{% endif %}"
    "{% endfor %}"
    "{% if message['role'] == 'assistant' %}{{ '</s>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# Mistral-style: like the real Mistral-based LLaVA-NeXT it has no system role (callers must fold it).
_MISTRAL_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{ raise_exception('System role not supported; only user and assistant roles are') }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{{ ' [/INST]' }}"
    "{% else %}"
    "{% for content in message['content'] %}{{ ' ' + content['text'] }}{% endfor %}{{ eos_token }}"
    "{% endif %}"
    "{% endfor %}"
)

# Video-LLaVA: LLaVA's turns, with a <video> placeholder where a frame stack goes.
_VIDEO_LLAVA_TEMPLATE = _LLAVA_TEMPLATE.replace(
    "{% elif content['type'] == 'text' %}",
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}{% elif content['type'] == 'text' %}",
)

_QWEN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Idefics2's template; Idefics3's (below) is the same after a written BOS token.
_IDEFICS2_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}"
    "{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}"
    "{% endfor %}<end_of_utterance>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
_IDEFICS3_TEMPLATE = "<|begin_of_text|>" + _IDEFICS2_TEMPLATE


# --- tiny model sizes shared by every family ---

_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
}
_VISION = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4}


def _llava_config(config_class: str, **extra: Any) -> Callable[[dict[str, int], int], Any]:
    """LLaVA, LLaVA-NeXT and Video-LLaVA: a CLIP tower (28 px, 14 px patches: 4 image tokens, 5 per
    video frame) and a Llama."""

    def make(ids: dict[str, int], vocab: int) -> Any:
        t = _transformers()
        vision = t.CLIPVisionConfig(**_VISION, image_size=28, patch_size=14, projection_dim=64)
        text = t.LlamaConfig(**_TEXT, vocab_size=vocab, **_token_ids(ids))
        return getattr(t, config_class)(
            vision_config=vision,
            text_config=text,
            image_token_index=ids["image"],
            image_seq_length=4,
            **({"video_token_index": ids["video"]} if "video" in ids else {}),
            **extra,
        )

    return make


def _qwen_vision(version: str) -> dict[str, Any]:
    common = {
        "hidden_size": 64,
        "num_heads": 4,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    if version == "2":
        return {**common, "depth": 1, "embed_dim": 64, "mlp_ratio": 2}
    # Qwen2.5-VL alternates windowed and full attention: two blocks exercise both.
    return {
        **common,
        "depth": 2,
        "intermediate_size": 128,
        "out_hidden_size": 64,
        "window_size": 56,
        "fullatt_block_indexes": [1],
    }


def _qwen_config(version: str) -> Callable[[dict[str, int], int], Any]:
    def make(ids: dict[str, int], vocab: int) -> Any:
        t = _transformers()
        config_class = t.Qwen2VLConfig if version == "2" else t.Qwen2_5_VLConfig
        head_dim = _TEXT["hidden_size"] // _TEXT["num_attention_heads"]
        half = head_dim // 2
        section = [half - 2 * (half // 3), half // 3, half // 3]  # temporal, height, width
        text = {
            **_TEXT,
            "vocab_size": vocab,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section},
            **_token_ids(ids),
        }
        return config_class(
            text_config=text,
            vision_config=_qwen_vision(version),
            image_token_id=ids["image"],
            video_token_id=ids["video"],
            vision_start_token_id=ids["vision_start"],
            vision_end_token_id=ids["vision_end"],
        )

    return make


def _idefics2_config(ids: dict[str, int], vocab: int) -> Any:
    """A SigLIP-style tower (28 px, 7 px patches), a perceiver resampler to 4 latents, a Mistral."""
    t = _transformers()
    vision = {**_VISION, "image_size": 28, "patch_size": 7}
    perceiver = {
        "hidden_size": _TEXT["hidden_size"],
        "resampler_n_latents": 4,
        "resampler_depth": 1,
        "resampler_n_heads": 2,
        "resampler_head_dim": 16,
        "num_key_value_heads": 1,
    }
    text = {**_TEXT, "model_type": "mistral", "vocab_size": vocab, **_token_ids(ids)}
    return t.Idefics2Config(
        vision_config=vision, perceiver_config=perceiver, text_config=text, image_token_id=ids["image"]
    )


def _idefics3_config(ids: dict[str, int], vocab: int) -> Any:
    t = _transformers()
    vision = {**_VISION, "image_size": 28, "patch_size": 7}
    text = {**_TEXT, "vocab_size": vocab, **_token_ids(ids)}
    return t.Idefics3Config(
        vision_config=vision, text_config=text, image_token_id=ids["image"], scale_factor=2
    )


@dataclass(frozen=True)
class _Family:
    """Everything that differs between families; one builder consumes it."""

    bos: str
    eos: str
    pad: str
    image_token: str
    extra_tokens: tuple[str, ...]
    chat_template: str
    make_config: Callable[[dict[str, int], int], Any]
    image_processor: tuple[str, dict[str, Any]]
    processor: tuple[str, dict[str, Any]]
    # Processors that also take videos: built with a torchvision-free stand-in, saved with this
    # config (the family's real video processor).
    video_processor: dict[str, Any] | None = None
    video_token: str | None = None


_QWEN_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# 28-pixel units (patch 14, merge 2): an Atari frame becomes 4 x 3 = 12 image tokens.
_QWEN_SIZE = {"shortest_edge": 56 * 56, "longest_edge": 112 * 112}
_QWEN_IMAGES = ("Qwen2VLImageProcessorPil", {"size": _QWEN_SIZE})
_QWEN_VIDEOS = {
    "video_processor_type": "Qwen2VLVideoProcessor",
    "size": _QWEN_SIZE,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
}
_CLIP_IMAGES = {"size": {"shortest_edge": 28}, "crop_size": {"height": 28, "width": 28}}
_LLAVA_PROCESSOR = {
    "patch_size": 14,
    "vision_feature_select_strategy": "default",
    "num_additional_image_tokens": 1,
}

_LLAVA = _Family(
    bos="<s>",
    eos="</s>",
    pad="<pad>",
    image_token="<image>",
    extra_tokens=(),
    chat_template=_LLAVA_TEMPLATE,
    make_config=_llava_config("LlavaConfig"),
    image_processor=("CLIPImageProcessorPil", _CLIP_IMAGES),
    processor=("LlavaProcessor", _LLAVA_PROCESSOR),
)

_QWEN2_VL = _Family(
    bos="<|endoftext|>",
    eos="<|im_end|>",
    pad="<|endoftext|>",
    image_token="<|image_pad|>",
    extra_tokens=_QWEN_TOKENS,
    chat_template=_QWEN_TEMPLATE,
    make_config=_qwen_config("2"),
    image_processor=_QWEN_IMAGES,
    processor=("Qwen2VLProcessor", {}),
    video_processor=_QWEN_VIDEOS,
    video_token="<|video_pad|>",
)

_FAMILIES: dict[str, _Family] = {
    "llava": _LLAVA,
    "llava_next": _Family(
        bos="<s>",
        eos="</s>",
        pad="<pad>",
        image_token="<image>",
        extra_tokens=("[INST]", "[/INST]"),
        chat_template=_MISTRAL_TEMPLATE,
        make_config=_llava_config("LlavaNextConfig", image_grid_pinpoints=[[28, 28]]),
        image_processor=("LlavaNextImageProcessorPil", {**_CLIP_IMAGES, "image_grid_pinpoints": [[28, 28]]}),
        processor=("LlavaNextProcessor", _LLAVA_PROCESSOR),
    ),
    # Video-LLaVA: LLaVA's tokens and turns, plus a <video> placeholder and its own processors.
    "video_llava": dataclasses.replace(
        _LLAVA,
        extra_tokens=("<video>",),
        chat_template=_VIDEO_LLAVA_TEMPLATE,
        make_config=_llava_config("VideoLlavaConfig", video_seq_length=5 * 8),
        image_processor=("VideoLlavaImageProcessor", _CLIP_IMAGES),
        processor=("VideoLlavaProcessor", _LLAVA_PROCESSOR),
        video_processor={"video_processor_type": "VideoLlavaVideoProcessor", **_CLIP_IMAGES},
        video_token="<video>",
    ),
    "qwen2_vl": _QWEN2_VL,
    # Qwen2.5-VL: Qwen2-VL's tokens, template and processors; a newer vision tower.
    "qwen2_5_vl": dataclasses.replace(
        _QWEN2_VL, make_config=_qwen_config("2.5"), processor=("Qwen2_5_VLProcessor", {})
    ),
    "idefics2": _Family(
        bos="<s>",
        eos="<end_of_utterance>",
        pad="<unk>",
        image_token="<image>",
        extra_tokens=("<fake_token_around_image>",),
        chat_template=_IDEFICS2_TEMPLATE,
        make_config=_idefics2_config,
        image_processor=(
            "Idefics2ImageProcessorPil",
            {"size": {"shortest_edge": 28, "longest_edge": 28}, "do_image_splitting": False},
        ),
        processor=("Idefics2Processor", {"image_seq_len": 4}),
    ),
    "idefics3": _Family(
        bos="<|begin_of_text|>",
        eos="<end_of_utterance>",
        pad="<|finetune_right_pad_id|>",
        image_token="<image>",
        extra_tokens=("<fake_token_around_image>", "<global-img>"),
        chat_template=_IDEFICS3_TEMPLATE,
        make_config=_idefics3_config,
        image_processor=(
            "Idefics3ImageProcessorPil",
            {
                "size": {"longest_edge": 28},
                "max_image_size": {"longest_edge": 28},
                "do_image_splitting": False,
            },
        ),
        processor=("Idefics3Processor", {"image_seq_len": 4}),
    ),
}

TINY_FAMILIES: tuple[str, ...] = tuple(_FAMILIES)
DEMO_FAMILY = "llava"  # fastest per decision on CPU and loads without the torchvision fallback


def _transformers() -> Any:
    return require("transformers", extra="local")


def tested_range() -> str:
    """:data:`TRANSFORMERS_TESTED` as a requirement specifier, e.g. ``>=5.23,<6``."""
    low, high = TRANSFORMERS_TESTED
    return f">={low},<{high}"


def check_transformers() -> str:
    """The installed transformers version, when the tiny families are tested with it.

    Raises:
        ConfigError: another version (the tiny configs and processors use that range's APIs), or
            transformers missing.
    """
    installed = str(_transformers().__version__)
    from packaging.version import InvalidVersion, Version  # a dependency of transformers

    low, high = TRANSFORMERS_TESTED
    try:
        ok = Version(low) <= Version(installed) < Version(high)
    except InvalidVersion:
        ok = False
    if not ok:
        raise ConfigError(
            f"the tiny checkpoints (--model demo, tests) are tested with transformers {tested_range()}, "
            f"but {installed} is installed; install a tested one: pip install 'transformers{tested_range()}'"
        )
    return installed


def _token_ids(ids: dict[str, int]) -> dict[str, int]:
    return {"bos_token_id": ids["bos"], "eos_token_id": ids["eos"], "pad_token_id": ids["pad"]}


def _special_tokens(family: _Family) -> list[str]:
    """The family's special tokens, deduplicated, in a fixed order (so token ids are stable)."""
    tokens = [family.pad, family.bos, family.eos, family.image_token, *family.extra_tokens]
    return list(dict.fromkeys(tokens))


def _build_tokenizer(family: _Family) -> Any:
    """A byte-level BPE trained on the corpus, wrapped as a fast tokenizer with the chat template."""
    tk = require("tokenizers", extra="local")
    t = _transformers()
    specials = _special_tokens(family)
    raw = tk.Tokenizer(tk.models.BPE())
    raw.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=640,
        min_frequency=1,
        special_tokens=specials,
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(_CORPUS * 4, trainer=trainer)
    extras = [tok for tok in specials if tok not in (family.pad, family.bos, family.eos)]
    return t.PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token=family.bos,
        eos_token=family.eos,
        pad_token=family.pad,
        extra_special_tokens=extras,
        padding_side="left",
        chat_template=family.chat_template,
        model_max_length=2048,
    )


def _build_processor(spec: _Family, tokenizer: Any) -> Any:
    from atari_vlm.models.local import build_processor

    t = _transformers()
    image_class, image_kwargs = spec.image_processor
    processor_class, processor_kwargs = spec.processor
    image_processor = getattr(t, image_class)(**image_kwargs)
    return build_processor(
        getattr(t, processor_class), image_processor, tokenizer, spec.chat_template, **processor_kwargs
    )


def _write_processor(spec: _Family, processor: Any, out: Path) -> None:
    """Save the processor; its video half is written as the family's real video processor config."""
    processor.save_pretrained(out)
    if spec.video_processor is None:
        return
    config_path = out / "processor_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["video_processor"] = spec.video_processor
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_markers(out: Path, family: str, seed: int) -> None:
    marker = {"atari_vlm_demo": True, "random_weights": True, "family": family, "seed": seed}
    marker["version"] = DEMO_VERSION
    # What it was built with, and the range the tiny families are tested with.
    marker["transformers"] = str(_transformers().__version__)
    marker["transformers_tested"] = tested_range()
    (out / DEMO_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    (out / DEMO_README).write_text(
        f"This is a tiny {family} checkpoint with RANDOM weights, built offline by atari-vlm\n"
        "(atari_vlm.models.tiny). It exercises the real model code path but its answers are noise:\n"
        "use it for tests and demos, never to measure how well a model plays.\n",
        encoding="utf-8",
    )


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """No progress bars while saving a model that takes milliseconds to write."""
    logging = _transformers().utils.logging
    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()


def build_tiny_checkpoint(family: str, out_dir: str | Path, *, seed: int = 0) -> Path:
    """Build a tiny random-weight ``family`` checkpoint into ``out_dir`` (atomically) and return it.

    The directory holds safetensors weights, the processor files and a chat template, and loads with
    ``AutoModelForImageTextToText`` and ``AutoProcessor`` (or :class:`~atari_vlm.models.local.LocalVLM`,
    which also loads the Qwen families without torchvision). It is written into a temporary sibling
    and renamed into place, so a crash leaves no half-written checkpoint behind.

    Raises:
        ConfigError: an unknown family, ``out_dir`` not empty, or a transformers version outside
            :data:`TRANSFORMERS_TESTED` (:func:`check_transformers`).
    """
    if family not in _FAMILIES:
        raise ConfigError(f"unknown tiny family {family!r}; choose one of {', '.join(TINY_FAMILIES)}")
    check_transformers()
    spec = _FAMILIES[family]
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already exists and is not an empty directory; pass a new directory")
    torch = require("torch", extra="local")
    t = _transformers()

    tokenizer = _build_tokenizer(spec)
    ids = {
        name: tokenizer.convert_tokens_to_ids(token)
        for name, token in (
            ("bos", spec.bos),
            ("eos", spec.eos),
            ("pad", spec.pad),
            ("image", spec.image_token),
            ("video", spec.video_token),
            ("vision_start", "<|vision_start|>"),
            ("vision_end", "<|vision_end|>"),
        )
        if token is not None
    }
    config = spec.make_config(ids, len(tokenizer))
    with _seeded(torch, seed):
        model = t.AutoModelForImageTextToText.from_config(config)
    model.eval()
    model.generation_config = t.GenerationConfig(
        bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"]
    )
    processor = _build_processor(spec, tokenizer)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        with _quiet_progress():
            model.save_pretrained(tmp, safe_serialization=True)
        _write_processor(spec, processor, tmp)
        _write_markers(tmp, family, seed)
        if out.exists():
            out.rmdir()  # empty, checked above; fails if another builder filled it meanwhile
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


@contextlib.contextmanager
def _seeded(torch: Any, seed: int) -> Iterator[None]:
    """Seed torch for the weight init without disturbing the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def demo_cache_root() -> Path:
    """Where demo checkpoints live: ``$ATARI_VLM_CACHE``, else ``~/.cache/atari-vlm``."""
    root = os.environ.get("ATARI_VLM_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "atari-vlm"


def demo_checkpoint(cache_dir: Path | None = None) -> Path:
    """The checkpoint behind ``--model demo``: built on first use (seconds), then reused from the cache.

    The directory name carries :data:`DEMO_VERSION`, so a change to the recipe builds a fresh one.

    Raises:
        ConfigError: a transformers version the tiny families are not tested with.
    """
    check_transformers()
    root = Path(cache_dir).expanduser() if cache_dir is not None else demo_cache_root()
    path = root / f"demo-{DEMO_FAMILY}-v{DEMO_VERSION}"
    if (path / DEMO_MARKER).is_file():
        return path
    if path.exists() and not any(path.iterdir()):
        path.rmdir()
    try:
        return build_tiny_checkpoint(DEMO_FAMILY, path)
    except (OSError, ConfigError):
        if (path / DEMO_MARKER).is_file():  # another process built it first
            return path
        raise
