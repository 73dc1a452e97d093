"""An in-process Hugging Face vision-language model with dynamic batching.

Agents call :meth:`LocalVLM.generate` one request at a time, often from many environments at once.
One padded ``model.generate`` over several prompts costs little more than one over a single prompt,
so concurrent calls are queued and a background task runs them together: it takes up to
``max_batch_size`` requests, waiting at most ``max_wait_s`` after the first, and runs the batch in a
worker thread so the event loop keeps stepping emulators meanwhile.

Besides free text, it answers with one of the request's legal choices by scoring them
(``Request.decode``: see :class:`LocalVLM`), which costs one forward pass over the prompt instead of a
generation, and can never be unplayable.

torch and transformers are imported lazily (the ``local`` extra); weights load from safetensors only,
never from pickles.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import importlib.util
import inspect
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from atari_vlm.errors import ConfigError, DependencyNotInstalled, ModelError, require
from atari_vlm.imaging import to_pil, to_rgb
from atari_vlm.models.base import Completion, ImagePart, Message, Obtained, Request, Usage

__all__ = [
    "DTYPES",
    "JSON_ANSWER",
    "LINE_ANSWER",
    "QUANTIZE_CHOICES",
    "AnswerShape",
    "FramesVideoProcessor",
    "LocalVLM",
    "adapter_base",
    "build_processor",
]

Quantize = Literal["4bit", "8bit"]
QUANTIZE_CHOICES: tuple[str, ...] = ("4bit", "8bit")
DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")
FRAME_VIDEO_MODELS: tuple[str, ...] = ("video_llava",)
"""Model types that take a frame stack as one video (their video tower encodes frames one by one)."""

# Vision towers and projectors stay in full precision when quantizing: they are small, sensitive,
# and bitsandbytes' 4-bit kernels reject layers narrower than 64 on CPU.
_VISION_MODULES = ("vision_tower", "visual", "vision_model", "multi_modal_projector", "connector")
# transformers 4.x matches skip names as substrings of module names; 5.x as prefixes, suffixes or
# regexes anchored at the start. Each name in both forms covers both.
_QUANTIZE_SKIP = ("lm_head", *_VISION_MODULES, *(f".*{name}" for name in _VISION_MODULES))


class FramesVideoProcessor:
    """A video processor that needs no torchvision: every frame through the checkpoint's image processor.

    transformers' video processors all require torchvision, which Atari frames never need: a frame
    stack is a few small frames already decoded. Models that encode a video as independent frames
    (Video-LLaVA: the CLIP tower runs on each frame) get the same ``pixel_values_videos`` (videos,
    frames, channels, height, width) as from their own video processor, since the image processor
    applies the same resize, crop and normalisation. It also lets the Qwen processors load, which
    insist on a video processor even for images (LocalVLM never sends them videos).
    """

    model_input_names = ["pixel_values_videos"]
    _auto_class = None  # ProcessorMixin.save_pretrained reads it

    def __init__(self, image_processor: Any) -> None:
        self.image_processor = image_processor
        self._options: dict[str, Any] = {"return_tensors": "pt"}
        if "return_legacy_image_output" in inspect.signature(image_processor.preprocess).parameters:
            self._options["return_legacy_image_output"] = False  # Video-LLaVA's: name it pixel_values

    def __call__(self, videos: Any, return_tensors: Any = None, **_: Any) -> Any:
        t = require("transformers", extra="local")
        clips = [list(v) for v in videos]
        lengths = {len(c) for c in clips}
        if len(lengths) != 1:
            raise ModelError(f"videos in one batch must have equal frame counts, got {sorted(lengths)}")
        out = self.image_processor(images=[f for c in clips for f in c], **self._options)
        pixels = out["pixel_values"]
        stacked = pixels.reshape(len(clips), lengths.pop(), *pixels.shape[1:])
        return t.BatchFeature({"pixel_values_videos": stacked}, tensor_type=return_tensors)

    def to_dict(self) -> dict[str, Any]:
        return {"video_processor_type": type(self).__name__}


def build_processor(
    processor_class: type,
    image_processor: Any,
    tokenizer: Any,
    chat_template: str | None,
    **init_kwargs: Any,
) -> Any:
    """``processor_class`` built from its parts; its video half, if it has one, a
    :class:`FramesVideoProcessor` (so that no torchvision is needed)."""
    if "video_processor" not in processor_class.get_attributes():
        return processor_class(
            image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **init_kwargs
        )

    class WithFramesVideo(processor_class):  # type: ignore[misc, valid-type]
        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            if isinstance(argument, FramesVideoProcessor):
                return FramesVideoProcessor
            return super().check_argument_for_proper_class(argument_name, argument)

        def to_dict(self) -> dict[str, Any]:
            out: dict[str, Any] = super().to_dict()
            if isinstance(out.get("video_processor"), FramesVideoProcessor):
                out["video_processor"] = out["video_processor"].to_dict()
            return out

    WithFramesVideo.__name__ = WithFramesVideo.__qualname__ = processor_class.__name__
    return WithFramesVideo(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=FramesVideoProcessor(image_processor),
        chat_template=chat_template,
        **init_kwargs,
    )


ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def adapter_base(path: Path) -> Path | None:
    """The base checkpoint of a LoRA adapter directory (peft's ``adapter_config.json`` names it in
    ``base_model_name_or_path``: a local directory, absolute or relative to the adapter); None when
    ``path`` is not an adapter directory (a full checkpoint has a config.json of its own).

    Raises:
        ConfigError: an adapter whose base is not a local checkpoint, or whose weights are not
            safetensors (pickled weights are never loaded).
    """
    if (path / "config.json").is_file() or not (path / ADAPTER_CONFIG).is_file():
        return None
    base = _read_json(path / ADAPTER_CONFIG).get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path / ADAPTER_CONFIG} names no base_model_name_or_path")
    candidates = [Path(base).expanduser()] if Path(base).is_absolute() else [path / base, Path(base)]
    found = next((c for c in candidates if (c / "config.json").is_file()), None)
    if found is None:
        raise ConfigError(
            f"the adapter in {path} is for base {base!r}, which is not a local checkpoint directory "
            "(config.json + safetensors); fix base_model_name_or_path in its adapter_config.json"
        )
    if not (path / ADAPTER_WEIGHTS).is_file():
        raise ConfigError(f"{path} holds no {ADAPTER_WEIGHTS} (adapters load from safetensors only)")
    return found


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _refuse_unsupported(path: Path) -> None:
    """Checkpoints that cannot run in-process here, refused (from config.json alone, before any of
    their code runs) with the way that works.

    CogVLM and CogVLM2 ship their model code (``trust_remote_code``), written for transformers
    4.41-4.43: it calls generation internals that transformers 4.45+ removed, and it takes images
    through its own ``build_conversation_input_ids`` (one image, 1344 px) rather than a processor and
    chat template. LMDeploy's OpenAI-compatible server runs it (in an environment of its own).
    """
    config = _read_json(path / "config.json")
    architectures, auto_map = config.get("architectures"), config.get("auto_map")
    names = [
        *(map(str, architectures) if isinstance(architectures, list) else []),
        *(map(str, auto_map.values()) if isinstance(auto_map, dict) else []),
    ]
    if any("cogvlm" in name.lower() for name in names):
        raise ConfigError(
            f"{path} is a CogVLM checkpoint, whose own model code needs transformers 4.41-4.43 and no "
            "processor, so it cannot run in-process beside the transformers 5 models here. Serve it with "
            "LMDeploy in an environment of its own (`lmdeploy serve api_server "
            "THUDM/cogvlm2-llama3-chat-19B --server-port 23333`) and play with --model "
            "openai:THUDM/cogvlm2-llama3-chat-19B --base-url http://127.0.0.1:23333/v1 (CogVLM2 reads "
            "one image per request: keep the default grid layout and no --history-images)"
        )


def _processor_class_name(path: Path, model_type: str) -> str | None:
    """The processor class a checkpoint names (processor or preprocessor config), else the default."""
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        if cls := _read_json(path / name).get("processor_class"):
            return str(cls)
    auto = require("transformers.models.auto.processing_auto", extra="local", package="transformers")
    return auto.PROCESSOR_MAPPING_NAMES.get(model_type)


def _chat_template(path: Path, tokenizer: Any) -> str | None:
    """The checkpoint's chat template: the processor's file if any, else the tokenizer's."""
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = _read_json(path / "chat_template.json").get("chat_template")
    return template or getattr(tokenizer, "chat_template", None)


def _load_processor(path: Path, trust_remote_code: bool) -> Any:
    """``AutoProcessor``; without torchvision, the same processor with a frames video processor."""
    t = require("transformers", extra="local")
    try:
        return t.AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:
        model_type = t.AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code).model_type
        class_name = _processor_class_name(path, model_type)
        base = getattr(t, class_name, None) if class_name else None
        if base is None or "video_processor" not in base.get_attributes():
            raise ModelError(f"cannot load the processor of {path}: {exc}") from exc
        try:
            tokenizer = t.AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            image_processor = t.AutoImageProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
            accepted = set(inspect.signature(base.__init__).parameters) - {
                "self",
                "chat_template",
                *base.get_attributes(),
            }
            saved = _read_json(path / "processor_config.json")
            init_kwargs = {k: v for k, v in saved.items() if k in accepted}
            return build_processor(
                base, image_processor, tokenizer, _chat_template(path, tokenizer), **init_kwargs
            )
        except Exception as fallback_exc:
            raise ModelError(
                f"cannot load the processor of {path}: {exc}; "
                f"building {class_name} with a torchvision-free video processor also failed: {fallback_exc}"
            ) from exc


def _quantization_config(quantize: str, torch: Any) -> Any:
    if importlib.util.find_spec("bitsandbytes") is None:
        raise DependencyNotInstalled(
            f"quantize={quantize!r} needs bitsandbytes, which is not installed; "
            "run `pip install bitsandbytes`"
        )
    t = require("transformers", extra="local")
    skip = list(_QUANTIZE_SKIP)
    if quantize == "4bit":
        return t.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32, llm_int8_skip_modules=skip
        )
    return t.BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)


def _frame_runs(parts: Sequence[Any], as_video: bool) -> list[Any]:
    """``parts`` with each run of two or more consecutive images grouped into one list (a video) when
    ``as_video``: a frame stack (``frame_layout="sequence"``) is exactly such a run, while exemplar and
    history images come one at a time between texts."""
    out: list[Any] = []
    for part in parts:
        if as_video and isinstance(part, ImagePart) and out and isinstance(out[-1], (ImagePart, list)):
            last = out.pop()
            out.append([*last, part] if isinstance(last, list) else [last, part])
        else:
            out.append(part)
    return out


def _to_chat(messages: Sequence[Message], as_video: bool = False) -> list[dict[str, Any]]:
    """Messages in the chat-template format: content is a list of image/video/text entries in order."""

    def entry(part: Any) -> dict[str, Any]:
        if isinstance(part, list):
            return {"type": "video"}
        if isinstance(part, ImagePart):
            return {"type": "image"}
        return {"type": "text", "text": part.text}

    return [{"role": m.role, "content": [entry(p) for p in _frame_runs(m.parts, as_video)]} for m in messages]


def _fold_system(messages: Sequence[Message]) -> list[Message]:
    """System turns merged into the first user turn, for templates that have no system role."""
    system = [p for m in messages if m.role == "system" for p in m.parts]
    rest = [m for m in messages if m.role != "system"]
    if not system:
        return rest
    for i, m in enumerate(rest):
        if m.role == "user":
            rest[i] = Message("user", (*system, *m.parts))
            return rest
    return [Message("user", tuple(system)), *rest]


@dataclass(frozen=True)
class AnswerShape:
    """How a chosen action is written: the text that constrained and scored decoding score.

    The line format's answer is ``ACTION: <name>`` (exactly the fine-tuning target of
    :mod:`atari_vlm.training.finetune`, which the end token follows); the JSON format's is
    ``{"action": "<name>"}``. After free reasoning, the choice follows the reasoning: at the
    ``marker`` where the model began writing its action, or on a line of its own when it never did.
    """

    prefix: str  # written before the name
    suffix: str  # written after the name
    opener: str  # written before ``prefix`` unless the reasoning stopped at the marker
    marker: re.Pattern[str]  # where free reasoning stops and the constrained choice begins

    def answer(self, name: str, lead: str = "", at_marker: bool = False) -> str:
        """The whole answer text for ``name`` after the reasoning ``lead``."""
        if at_marker:
            return f"{lead}{self.prefix}{name}{self.suffix}"
        separator = "\n" if lead and not lead[-1].isspace() else ""
        return f"{lead}{separator}{self.opener}{self.prefix}{name}{self.suffix}"


LINE_ANSWER = AnswerShape(
    prefix="ACTION: ",
    suffix="",
    opener="",
    # "ACTION:" anywhere, or "Action:" / "**action:**" beginning a line.
    marker=re.compile(r"\bACTION\s*:|(?im:^[\s*#>_`-]*action\s*:)"),
)
JSON_ANSWER = AnswerShape(
    prefix='"action": "', suffix='"}', opener="{", marker=re.compile(r'(?i)"action"\s*:')
)
MAX_CHOICES = 256
MAX_CHOICE_CHARS = 100
MIN_CACHED_PREFIX = 16  # tokens: a shorter shared prefix is not worth a KV cache of its own
MAX_CACHED_PREFIXES = 4  # prompt prefixes whose KV is kept (one per game and prompt style in practice)


def _check_choices(choices: Sequence[str]) -> None:
    if len(choices) > MAX_CHOICES:
        raise ModelError(f"at most {MAX_CHOICES} choices can be decoded, got {len(choices)}")
    for choice in choices:
        if not isinstance(choice, str) or not choice or len(choice) > MAX_CHOICE_CHARS:
            raise ModelError(
                f"each choice must be a string of 1-{MAX_CHOICE_CHARS} characters, got {choice!r}"
            )
    if len(set(choices)) != len(choices):
        raise ModelError(f"choices must be distinct, got {list(choices)}")


def _common_prefix(sequences: Sequence[Sequence[int]]) -> list[int]:
    """The longest token prefix that every sequence starts with."""
    first = np.asarray(sequences[0], dtype=np.int64)
    n = len(first)
    for other in sequences[1:]:
        m = min(n, len(other))
        differ = np.flatnonzero(first[:m] != np.asarray(other[:m], dtype=np.int64))
        n = int(differ[0]) if differ.size else m
    return first[:n].tolist()


def _softmax(values: np.ndarray) -> np.ndarray:
    shifted = np.exp(values - values.max())
    return shifted / shifted.sum()


@dataclass
class _Pending:
    """One queued request: its rendered prompt, its images and videos, and the caller's future."""

    request: Request
    prompt: str
    images: list[Any]
    videos: list[list[Any]]
    future: asyncio.Future[Completion]
    number: int  # the request's place in the order of submission: its random streams derive from it
    queued_at: float = field(default_factory=time.perf_counter)

    @property
    def batch_key(self) -> tuple[Any, ...]:
        """Requests share one forward or ``generate`` only when it treats them alike: the same decode
        mode, answer shape and sampling settings (a greedy and a sampled request never share a
        ``generate``), and image inputs that stack (videos of equal frame counts). Choices may differ:
        every request's candidates are rows of their own."""
        request = self.request
        choosing = request.decode != "free"
        generating = not choosing or request.reasoning
        return (
            request.decode,
            choosing and request.reasoning,
            choosing and request.json_mode,
            request.max_tokens if generating else 0,
            request.temperature,
            bool(self.images),
            tuple(len(v) for v in self.videos),
        )


@dataclass
class _Row:
    text: str
    usage: Usage
    finish_reason: str
    obtained: Obtained = "free"
    choice: str | None = None
    choice_probs: dict[str, float] | None = None


@dataclass(frozen=True)
class _Reasoning:
    """The free reasoning of one request, up to the marker where its constrained choice begins."""

    lead: str
    at_marker: bool  # the model itself began its action at the marker
    truncated: bool  # stopped by max_tokens before a marker or an end token


class _Batcher:
    """The queue and background task of one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: list[_Pending] = []
        self.wakeup = asyncio.Event()
        self.full = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class LocalVLM:
    """A local image-text-to-text checkpoint behind the :class:`~atari_vlm.models.base.VLM` protocol.

    Decoding (``Request.decode``):

    - ``free``: ``model.generate`` writes the answer; the agent parses it.
    - ``score``: no generation. One forward pass over the prompt, with every candidate's tokens
      after it under a mask that keeps the candidates apart, gives the log-likelihood of each legal
      answer, ``ACTION: <name>`` followed by an end token (see :meth:`_score`). The text before
      the first image (the system prompt, the same at every decision) is computed once and its KV
      reused while it stays the same (``prefix_cache``, on by default), so each decision's forward
      covers only the rest.
    - ``constrained``: the same exact choice among the legal answers (the model's distribution
      restricted to them, which token masking in ``generate`` only approximates), written as
      ``obtained="constrained"``; with ``Request.reasoning``, ``generate`` first writes free
      reasoning (at most ``max_tokens``) until the model starts its action line (``ACTION:``), and
      the choice is scored after it. ``score`` with ``reasoning`` does the same.

    Greedy (temperature 0) takes the most likely choice; temperature T > 0 samples from the choices'
    probabilities raised to 1/T. ``Completion.choice_probs`` holds the model's own probabilities
    (at T = 1) of every legal choice, summing to 1.

    Sampling is reproducible: every request draws from random streams derived from ``seed`` and its
    place in the order of submission to this model (``generate`` calls), so the same requests in
    the same order give the same answers. Sampled generation also depends on which requests share a
    batch, which concurrent games decide by timing; one game at a time replays exactly.
    """

    decode_modes: tuple[str, ...] = ("free", "constrained", "score")
    """What the agent may ask for (``--decode``); ``auto`` takes ``score`` for answers without reasoning."""

    def __init__(
        self,
        path: str | Path,
        *,
        device: str = "cpu",
        dtype: str = "auto",
        quantize: Quantize | None = None,
        max_batch_size: int = 8,
        max_wait_s: float = 0.005,
        trust_remote_code: bool = False,
        seed: int = 0,
    ) -> None:
        self.path = Path(path).expanduser()
        # A LoRA adapter directory (atari-vlm finetune) plays as its base with the adapter merged in.
        self.base_path = adapter_base(self.path) if self.path.is_dir() else None
        weights = self.base_path or self.path
        if not self.path.is_dir() or not (weights / "config.json").is_file():
            raise ConfigError(
                f"local model path {str(path)!r} must be a checkpoint directory containing config.json "
                "and *.safetensors weights (as written by save_pretrained), or a LoRA adapter directory "
                "(adapter_config.json + adapter_model.safetensors)"
            )
        _refuse_unsupported(weights)
        if quantize is not None and quantize not in QUANTIZE_CHOICES:
            raise ConfigError(f"quantize must be one of {QUANTIZE_CHOICES} or None, got {quantize!r}")
        if dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_wait_s < 0:
            raise ConfigError(f"max_wait_s must be >= 0, got {max_wait_s}")

        self._torch = torch = require("torch", extra="local")
        t = require("transformers", extra="local")
        quantization = None if quantize is None else _quantization_config(quantize, torch)
        self.name = f"local/{self.path.name}"
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.processor = _load_processor(weights, trust_remote_code)
        self.tokenizer = self.processor.tokenizer
        if not (getattr(self.processor, "chat_template", None) or self.tokenizer.chat_template):
            raise ConfigError(
                f"{self.path} has no chat template (chat_template.jinja or the tokenizer's); "
                "LocalVLM needs an instruction-tuned checkpoint that ships one"
            )
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

        load_kwargs: dict[str, Any] = {
            "use_safetensors": True,
            "trust_remote_code": trust_remote_code,
            "dtype": dtype if dtype == "auto" else getattr(torch, dtype),
        }
        if quantization is not None:
            load_kwargs["quantization_config"] = quantization
            load_kwargs["device_map"] = device
        t.utils.logging.disable_progress_bar()  # atari-vlm shows its own progress; keep the terminal clean
        try:
            self.model = t.AutoModelForImageTextToText.from_pretrained(weights, **load_kwargs)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load the model in {weights}: {exc}") from exc
        if self.base_path is not None:
            self.model = self._apply_adapter(self.model, merge=quantization is None)
        if quantization is None:
            self.model.to(device)
        self.model.eval()

        self._eos_ids = self._find_eos_ids()
        self._image_token_id = self._find_image_token_id()
        video_token_id = getattr(self.model.config, "video_token_id", None)
        self._video_token_id = video_token_id if isinstance(video_token_id, int) else None
        # Models that read a video as its frames (see FramesVideoProcessor) get the frame stack as one.
        self.frames_as_video = (
            self.model.config.model_type in FRAME_VIDEO_MODELS and self._video_token_id is not None
        )
        self._system_ok = True  # until the chat template rejects a system turn
        self._batcher: _Batcher | None = None
        self._closed = False
        self.seed = seed
        self._submitted = 0  # requests so far, numbering each one's random streams
        self._sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep  # the batch window's clock
        self._end_ids = sorted(self._eos_ids | ({self.tokenizer.eos_token_id} - {None}))
        forward = inspect.signature(self.model.forward).parameters
        # transformers 5.24 renamed the forward's cache argument (the old name still works there).
        self._cache_argument = "cache" if "cache" in forward else "past_key_values"
        self._last_logits_only = {"logits_to_keep": 1} if "logits_to_keep" in forward else {}
        self.prefix_cache = True  # scoring reuses the KV of the text before the first image
        self._prefixes: dict[tuple[int, ...], Any] = {}  # that KV, most recently used last
        self._answer_cache: dict[tuple[str, ...], list[list[int]]] = {}

    # --- setup helpers ---

    def _apply_adapter(self, model: Any, *, merge: bool) -> Any:
        """The adapter in ``self.path`` on ``model``; merged into the weights unless quantized."""
        peft = require("peft", extra="finetune")
        try:
            wrapped = peft.PeftModel.from_pretrained(model, str(self.path), is_trainable=False)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"cannot apply the adapter in {self.path} to {self.base_path}: {exc}") from exc
        return wrapped.merge_and_unload() if merge else wrapped

    def _find_eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        ids = {eos} if isinstance(eos, int) else set(eos or ())
        if not ids:
            raise ModelError(f"{self.path} defines no end-of-sequence token (generation_config.eos_token_id)")
        return ids

    def _find_image_token_id(self) -> int | None:
        for source, attr in (
            (self.model.config, "image_token_id"),
            (self.model.config, "image_token_index"),
            (self.processor, "image_token_id"),
        ):
            value = getattr(source, attr, None)
            if isinstance(value, int):
                return value
        token = getattr(self.processor, "image_token", None)
        return self.tokenizer.convert_tokens_to_ids(token) if token else None

    # --- prompts ---

    def _render(self, messages: Sequence[Message]) -> str:
        """The prompt in the model's own chat template; system turns folded in if it has none."""
        if self._system_ok or not any(m.role == "system" for m in messages):
            try:
                return self._apply_template(messages)
            except Exception as exc:
                if not any(m.role == "system" for m in messages):
                    raise ModelError(f"{self.name}: the chat template failed: {exc}") from exc
                self._system_ok = False
        try:
            return self._apply_template(_fold_system(messages))
        except Exception as exc:
            raise ModelError(f"{self.name}: the chat template failed: {exc}") from exc

    def render(self, messages: Sequence[Message]) -> str:
        """The prompt text that :meth:`generate` feeds the model for ``messages`` (fine-tuning uses it)."""
        return self._render(messages)

    def _apply_template(self, messages: Sequence[Message]) -> str:
        return self.processor.apply_chat_template(
            _to_chat(messages, self.frames_as_video), add_generation_prompt=True, tokenize=False
        )

    # --- the VLM protocol ---

    async def generate(self, request: Request) -> Completion:
        """Queue ``request`` for the next batch and wait for its completion."""
        if self._closed:
            raise ModelError(f"{self.name} is closed")
        if not request.messages:
            raise ModelError("a request needs at least one message")
        if request.max_tokens < 1:
            raise ModelError(f"max_tokens must be at least 1, got {request.max_tokens}")
        if request.decode != "free":
            _check_choices(request.choices)
        prompt = self._render(request.messages)
        images: list[Any] = []
        videos: list[list[Any]] = []
        for message in request.messages:
            for part in _frame_runs(message.parts, self.frames_as_video):
                if isinstance(part, list):
                    videos.append([to_pil(to_rgb(p.pixels)) for p in part])
                elif isinstance(part, ImagePart):
                    images.append(to_pil(to_rgb(part.pixels)))
        batcher = self._ensure_batcher()
        pending = _Pending(request, prompt, images, videos, batcher.loop.create_future(), self._submitted)
        self._submitted += 1
        batcher.pending.append(pending)
        batcher.wakeup.set()
        if len(batcher.pending) >= self.max_batch_size:
            batcher.full.set()
        return await pending.future

    async def aclose(self) -> None:
        """Stop the batching task; queued callers get a :class:`ModelError`. Safe to call twice."""
        self._closed = True
        batcher, self._batcher = self._batcher, None
        if batcher is None or batcher.loop.is_closed():
            return
        if batcher.task is not None and not batcher.task.done():
            batcher.task.cancel()
            if batcher.loop is asyncio.get_running_loop():
                with contextlib.suppress(asyncio.CancelledError):
                    await batcher.task
        self._fail(batcher.pending, ModelError(f"{self.name} was closed before answering"))

    # --- batching ---

    def _ensure_batcher(self) -> _Batcher:
        """The running loop's batcher (a new loop, e.g. a second ``asyncio.run``, gets a new one)."""
        loop = asyncio.get_running_loop()
        if self._batcher is None or self._batcher.loop is not loop or self._batcher.task.done():
            self._batcher = _Batcher(loop)
            self._batcher.task = loop.create_task(self._serve(self._batcher))
        return self._batcher

    async def _serve(self, batcher: _Batcher) -> None:
        while True:
            while not batcher.pending:
                batcher.wakeup.clear()
                await batcher.wakeup.wait()
            if len(batcher.pending) < self.max_batch_size and self.max_wait_s > 0:
                await self._fill_window(batcher)
            batch = batcher.pending[: self.max_batch_size]
            del batcher.pending[: self.max_batch_size]
            groups: dict[tuple[Any, ...], list[_Pending]] = {}
            for pending in batch:
                groups.setdefault(pending.batch_key, []).append(pending)
            for group in groups.values():
                await self._run_group(group)

    async def _fill_window(self, batcher: _Batcher) -> None:
        """Wait until ``max_batch_size`` requests are queued or ``max_wait_s`` has passed (on
        ``self._sleep``, which tests replace with a clock of their own)."""
        batcher.full.clear()
        full = asyncio.ensure_future(batcher.full.wait())
        deadline = asyncio.ensure_future(self._sleep(self.max_wait_s))
        try:
            await asyncio.wait((full, deadline), return_when=asyncio.FIRST_COMPLETED)
        finally:
            full.cancel()
            deadline.cancel()

    async def _run_group(self, group: list[_Pending]) -> None:
        live = [p for p in group if not p.future.done()]  # callers may have given up
        if not live:
            return
        try:
            rows = await asyncio.to_thread(self._generate_batch, live)
        except asyncio.CancelledError:  # aclose() or the loop shutting down mid-batch
            self._fail(live, ModelError(f"{self.name} was closed before answering"))
            raise
        except Exception as exc:
            self._fail(live, exc)
            return
        now = time.perf_counter()
        for pending, row in zip(live, rows, strict=True):
            if not pending.future.done():
                pending.future.set_result(
                    Completion(
                        text=row.text,
                        usage=row.usage,
                        latency_s=now - pending.queued_at,
                        model=self.name,
                        finish_reason=row.finish_reason,
                        obtained=row.obtained,
                        choice=row.choice,
                        choice_probs=row.choice_probs,
                    )
                )

    @staticmethod
    def _fail(batch: list[_Pending], exc: BaseException) -> None:
        """Every caller still waiting on ``batch`` gets ``exc``."""
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(exc)

    # --- one batch (runs in a worker thread) ---

    def _generate_batch(self, batch: list[_Pending]) -> list[_Row]:
        """Answer one batch of alike requests (see :attr:`_Pending.batch_key`)."""
        inputs = self._encode(batch)
        if batch[0].request.decode == "free":
            return self._free_rows(batch, inputs)
        return self._choice_rows(batch, inputs)

    def _encode(self, batch: list[_Pending]) -> dict[str, Any]:
        """The batch's prompts and images through the processor: left-padded tensors on the model's device."""
        prompts = [p.prompt for p in batch]
        # A template that writes the BOS token itself must not get a second one from the tokenizer.
        bos = self.tokenizer.bos_token
        doubled_bos = bool(bos) and all(prompt.startswith(bos) for prompt in prompts)
        inputs_kwargs: dict[str, Any] = {
            "text": prompts,
            "padding": True,
            "add_special_tokens": not doubled_bos,
        }
        if batch[0].images:
            inputs_kwargs["images"] = [p.images for p in batch]
        if batch[0].videos:
            inputs_kwargs["videos"] = [video for p in batch for video in p.videos]
        inputs = self.processor(**inputs_kwargs, return_tensors="pt")
        return {
            k: v.to(self.model.device, dtype=self.model.dtype)
            if v.is_floating_point()
            else v.to(self.model.device)
            for k, v in inputs.items()
        }

    def _image_tokens(self, prompt_ids: Any) -> int | None:
        vision_ids = {self._image_token_id, self._video_token_id} - {None}
        if not vision_ids:
            return None
        return sum(int((prompt_ids == token).sum()) for token in vision_ids)

    def _run_generate(self, batch: list[_Pending], inputs: dict[str, Any], **extra: Any) -> Any:
        """``model.generate`` with the batch's shared settings; sampling seeded from its first request."""
        torch = self._torch
        request = batch[0].request
        sampling: dict[str, Any] = {"do_sample": False}
        if request.temperature > 0:
            sampling = {"do_sample": True, "temperature": request.temperature}
        with torch.inference_mode(), self._seeded(batch[0].number, sampled=request.temperature > 0):
            return self.model.generate(
                **inputs,
                max_new_tokens=request.max_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                **sampling,
                **extra,
            )

    @contextlib.contextmanager
    def _seeded(self, number: int, *, sampled: bool) -> Iterator[None]:
        """torch's random state seeded for request ``number`` (and restored after) when sampling."""
        if not sampled:
            yield
            return
        torch = self._torch
        device = self.model.device
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(self._stream(number, 0).integers(2**63)))
            yield

    def _stream(self, number: int, purpose: int) -> np.random.Generator:
        """Request ``number``'s random stream for ``purpose`` (0: torch sampling, 1: picking a choice)."""
        return np.random.default_rng([self.seed, number, purpose])

    def _free_rows(self, batch: list[_Pending], inputs: dict[str, Any]) -> list[_Row]:
        """One padded (left) ``model.generate``; the agent parses the texts."""
        output = self._run_generate(batch, inputs)
        prompt_len = inputs["input_ids"].shape[1]
        rows = []
        for i in range(len(batch)):
            new = output[i, prompt_len:].tolist()
            end = next((j + 1 for j, tok in enumerate(new) if tok in self._eos_ids), None)
            tokens = new if end is None else new[:end]
            rows.append(
                _Row(
                    text=self.tokenizer.decode(tokens, skip_special_tokens=True),
                    usage=Usage(
                        input_tokens=int(inputs["attention_mask"][i].sum()),
                        output_tokens=len(tokens),
                        image_tokens=self._image_tokens(inputs["input_ids"][i]),
                    ),
                    finish_reason="length" if end is None else "stop",
                )
            )
        return rows

    def _choice_rows(self, batch: list[_Pending], inputs: dict[str, Any]) -> list[_Row]:
        """Constrained or scored answers: (free reasoning, then) exactly one of each request's choices."""
        request = batch[0].request
        shape = JSON_ANSWER if request.json_mode else LINE_ANSWER
        reasonings = [_Reasoning("", False, False)] * len(batch)
        if request.reasoning:
            reasonings = self._reason(batch, inputs, shape)
        answers = [
            [shape.answer(name, r.lead, r.at_marker) for name in p.request.choices]
            for p, r in zip(batch, reasonings, strict=True)
        ]
        with self._torch.inference_mode():
            log_likelihoods, answer_ids = self._score(inputs, answers)
        obtained: Obtained = "scored" if request.decode == "score" else "constrained"
        rows = []
        for i, pending in enumerate(batch):
            choices = pending.request.choices
            probs = _softmax(log_likelihoods[i])
            if request.temperature > 0:
                tempered = _softmax(log_likelihoods[i] / request.temperature)
                draw = self._stream(pending.number, 1).random()
                index = min(int(np.searchsorted(np.cumsum(tempered), draw, side="right")), len(choices) - 1)
            else:
                index = int(np.argmax(log_likelihoods[i]))
            rows.append(
                _Row(
                    text=answers[i][index],
                    usage=Usage(
                        input_tokens=int(inputs["attention_mask"][i].sum()),
                        output_tokens=len(answer_ids[i][index]) + 1,  # the answer and its end token
                        image_tokens=self._image_tokens(inputs["input_ids"][i]),
                    ),
                    finish_reason="length" if reasonings[i].truncated else "stop",
                    obtained=obtained,
                    choice=choices[index],
                    choice_probs={name: float(p) for name, p in zip(choices, probs, strict=True)},
                )
            )
        return rows

    def _reason(self, batch: list[_Pending], inputs: dict[str, Any], shape: AnswerShape) -> list[_Reasoning]:
        """Free reasoning for each request, stopped where the model starts writing its action (the
        shape's marker), at an end token, or after ``max_tokens``."""
        prompt_len = inputs["input_ids"].shape[1]
        stop = _stop_at_marker(self.tokenizer, shape.marker, prompt_len)
        output = self._run_generate(batch, inputs, stopping_criteria=stop)
        max_tokens = batch[0].request.max_tokens
        reasonings = []
        for i in range(len(batch)):
            new = output[i, prompt_len:].tolist()
            end = next((j for j, tok in enumerate(new) if tok in self._eos_ids), None)
            text = self.tokenizer.decode(new if end is None else new[:end], skip_special_tokens=True)
            found = shape.marker.search(text)
            if found:
                reasonings.append(_Reasoning(text[: found.start()], True, False))
            else:
                reasonings.append(_Reasoning(text, False, end is None and len(new) >= max_tokens))
        return reasonings

    def _score(
        self, inputs: dict[str, Any], answers: list[list[str]]
    ) -> tuple[list[np.ndarray], list[list[list[int]]]]:
        """The log-likelihood of every candidate answer after its request's prompt.

        Each answer is tokenized as fine-tuning tokenizes its target (the tokenizer alone, after the
        processor's prompt ids) and scored with an end token after it: log P(answer tokens, end |
        prompt), summed over the tokens and *not* length-normalized. With the end token the
        candidates are disjoint complete answers ("UP" ends where "UPRIGHT" goes on), so their
        normalized probabilities are exactly the model's distribution over the legal answers;
        dividing by the length would no longer be a probability and would favour multi-token names.
        The candidates' common token prefix (``ACTION:``, the reasoning) has the same probability for
        all of them, so it joins the prompt. The rest of every candidate (its *suffix*) is appended
        after the prompt too, all of a request's suffixes side by side, and one forward runs the
        lot: a 4-D attention mask lets each suffix token see the prompt and the earlier tokens of its
        own suffix only, and its position continues the prompt's, so every suffix is scored exactly
        as if it alone followed the prompt (:meth:`_one_pass`). Where a sliding attention window
        is shorter than that layout, the suffixes instead run as a second batched forward over the
        prompt's KV cache, its rows repeated per candidate (:meth:`_two_pass`).

        Returns each request's log-likelihoods (up to the shared prefix's, the same for all) and
        the candidates' token ids.
        """
        torch = self._torch
        answer_ids = [self._answer_ids(texts) for texts in answers]
        shared = [_common_prefix(ids) for ids in answer_ids]
        suffixes = [[ids[len(p) :] for ids in row] for row, p in zip(answer_ids, shared, strict=True)]
        prompt = _append_tokens(inputs, shared, self.tokenizer.pad_token_id, torch)
        block = max(sum(len(s) for s in row) for row in suffixes)
        if self._one_pass_fits(prompt["input_ids"].shape[1] + block):
            logp, rows, offsets = self._one_pass(prompt, suffixes)
        else:
            logp, rows, offsets = self._two_pass(prompt, suffixes)
        flat = [s for row in suffixes for s in row]
        totals = _candidate_totals(logp, rows, offsets, flat, self._end_ids, torch).tolist()
        scores, start = [], 0
        for row in suffixes:
            scores.append(np.array(totals[start : start + len(row)]))
            start += len(row)
        return scores, answer_ids

    def _one_pass_fits(self, length: int) -> bool:
        """Whether the suffixes can share the prompt's forward under a mask of their own: the
        attention takes a 4-D mask (sdpa or eager, not flash attention) and every layer attends to
        all of ``length`` tokens (no sliding window cuts in)."""
        text = self.model.config.get_text_config(decoder=True)
        if _attention_kind(self.model) not in ("sdpa", "eager"):
            return False
        window = getattr(text, "sliding_window", None)
        if not isinstance(window, int) or not getattr(text, "use_sliding_window", True):
            return True
        return length + 1 < window

    def _one_pass(self, prompt: dict[str, Any], suffixes: list[list[list[int]]]) -> tuple[Any, Any, Any]:
        """Prompt and every candidate's suffix in one forward (see :meth:`_score`).

        Row r's suffixes are laid side by side after its prompt; the returned log-probabilities are
        (requests, 1 + block, vocab): at the prompt's last token, then after each block token.
        Candidate n (flattened) lives in row ``rows[n]`` from block offset ``offsets[n]``.
        """
        torch = self._torch
        device = self.model.device
        width = max(sum(len(s) for s in row) for row in suffixes)
        tokens = torch.full((len(suffixes), width), self.tokenizer.pad_token_id, dtype=torch.long)
        owner = torch.full((len(suffixes), width), -1, dtype=torch.long)  # the candidate; -1: padding
        step = torch.zeros((len(suffixes), width), dtype=torch.long)  # the place within the candidate
        rows, offsets = [], []
        for r, row in enumerate(suffixes):
            at = 0
            for k, suffix in enumerate(row):
                rows.append(r)
                offsets.append(at)
                tokens[r, at : at + len(suffix)] = torch.tensor(suffix, dtype=torch.long)
                owner[r, at : at + len(suffix)] = k
                step[r, at : at + len(suffix)] = torch.arange(len(suffix))
                at += len(suffix)
        block = (tokens.to(device), owner.to(device), step.to(device))
        logits = self._prefill(prompt, block=block)[0]
        logp = logits.float().log_softmax(-1)
        return logp, torch.tensor(rows, device=device), torch.tensor(offsets, device=device)

    def _two_pass(self, prompt: dict[str, Any], suffixes: list[list[list[int]]]) -> tuple[Any, Any, Any]:
        """The prompt's forward, then every candidate's suffix as a row of one batched forward over
        the prompt's KV cache (its rows repeated per candidate); log-probabilities as
        :meth:`_one_pass` returns them, one row per candidate (offsets 0)."""
        torch = self._torch
        device = self.model.device
        logits, cache, attention, positions = self._prefill(prompt)
        first = logits.float().log_softmax(-1)  # (requests, vocab): after the prompt
        flat = [s for row in suffixes for s in row]
        select = torch.tensor([r for r, row in enumerate(suffixes) for _ in row], device=device)
        offsets = torch.zeros(len(flat), dtype=torch.long, device=device)
        width = max(len(s) for s in flat)
        if width == 0:
            return first.index_select(0, select)[:, None], torch.arange(len(flat), device=device), offsets
        tokens = torch.full((len(flat), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(flat), width), dtype=torch.long)
        for n, suffix in enumerate(flat):
            tokens[n, : len(suffix)] = torch.tensor(suffix, dtype=torch.long)
            mask[n, : len(suffix)] = 1
        tokens, mask = tokens.to(device), mask.to(device)
        cache.batch_select_indices(select)
        batch_dim = 1 if positions.ndim == 3 else 0  # Qwen's multimodal rope: (axes, batch, length)
        steps = torch.arange(1, width + 1, device=device).view(*([1] * (positions.ndim - 1)), width)
        out = self.model(
            input_ids=tokens,
            attention_mask=torch.cat([attention.index_select(0, select), mask], 1),
            position_ids=positions.index_select(batch_dim, select)[..., -1:] + steps,
            use_cache=True,
            **{self._cache_argument: cache},
        )
        later = out.logits.float().log_softmax(-1)  # (candidates, width, vocab)
        logp = torch.cat([first.index_select(0, select)[:, None], later], 1)
        return logp, torch.arange(len(flat), device=device), offsets

    def _answer_ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids of candidate answers (cached: without reasoning they repeat every decision)."""
        key = tuple(texts)
        ids = self._answer_cache.get(key)
        if ids is None:
            ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
            if len(self._answer_cache) >= 64:
                self._answer_cache.clear()
            self._answer_cache[key] = ids
        return ids

    def _prefill(
        self, inputs: dict[str, Any], block: tuple[Any, Any, Any] | None = None
    ) -> tuple[Any, Any, Any, Any]:
        """One forward over a batch of prompts (left-padded ``inputs``): the logits after each
        prompt, the KV cache, and the attention mask and position ids that go with the cache.

        The text before the first image (the system prompt, the same at every decision) is computed
        once and its KV reused (:meth:`_cached_prefix`); the batch then lays out as prefix, padding,
        rest of the prompt, and only the rest runs through the model.

        With ``block`` (tokens, owner, step: each (requests, width)), the block's tokens follow the
        prompts in the same forward under a 4-D mask (:func:`_block_mask`), each at the position
        after its prompt's last plus ``step``, and the logits cover the prompt's last token and every
        block token: (requests, 1 + width, vocab), and no cache (the block's KV is of no further use).
        """
        torch = self._torch
        prefix = self._shared_prefix(inputs) if self.prefix_cache else None
        n = 0 if prefix is None else len(prefix)
        full = inputs if prefix is None else _pad_after(inputs, n, self.tokenizer.pad_token_id, torch)
        positions = self._positions(full)
        cached: dict[str, Any] = {}
        if prefix is not None:
            cache = self._cached_prefix(prefix, positions[..., :1, :n])
            cache.batch_repeat_interleave(full["input_ids"].shape[0])
            cached[self._cache_argument] = cache
        rest = {k: v[:, n:] if k in _TOKEN_VALUES else v for k, v in full.items()}
        keep = self._last_logits_only
        attention = full["attention_mask"]
        run_positions = positions[..., n:]
        if block is not None:
            tokens, owner, step = block
            for key in _TOKEN_VALUES:
                if key in rest:
                    extra = tokens if key == "input_ids" else torch.zeros_like(tokens, dtype=rest[key].dtype)
                    rest[key] = torch.cat([rest[key], extra], 1)
            after = positions[..., -1:] + 1 + (step if positions.ndim == 2 else step[None])
            run_positions = torch.cat([run_positions, after], -1)
            additive = None if _attention_kind(self.model) == "sdpa" else self.model.dtype
            rest["attention_mask"] = _block_mask(attention, owner, n, additive, torch)
            keep = {"logits_to_keep": tokens.shape[1] + 1} if keep else {}
        # The block's own KV is never used again: no cache to build unless the prefix's is passed in.
        grow = block is None or bool(cached)
        out = self.model(**rest, position_ids=run_positions, use_cache=grow, **cached, **keep)
        if block is not None:
            return out.logits[:, -(block[0].shape[1] + 1) :], None, attention, positions
        return out.logits[:, -1], _output_cache(out), attention, positions

    def _shared_prefix(self, inputs: dict[str, Any]) -> tuple[int, ...] | None:
        """The token ids that every prompt of the batch starts with, up to the first image or video
        token (whose KV depends on the pixels); None when too short to be worth caching."""
        vision = {self._image_token_id, self._video_token_id} - {None}
        mask = inputs["attention_mask"].bool()
        heads = []
        for ids, keep in zip(inputs["input_ids"], mask, strict=True):
            row = ids[keep].tolist()
            cut = next((j for j, token in enumerate(row) if token in vision), None)
            if cut is None:  # a text-only prompt: no fixed boundary to cache up to
                return None
            heads.append(row[:cut])
        prefix = _common_prefix(heads)
        return tuple(prefix) if len(prefix) >= MIN_CACHED_PREFIX else None

    def _cached_prefix(self, prefix: tuple[int, ...], positions: Any) -> Any:
        """A copy of the KV cache of ``prefix`` (one row), computed on first use and kept among the
        ``MAX_CACHED_PREFIXES`` most recently used."""
        torch = self._torch
        cache = self._prefixes.pop(prefix, None)
        if cache is None:
            ids = torch.tensor([prefix], device=self.model.device)
            out = self.model(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                position_ids=positions,
                use_cache=True,
                **self._last_logits_only,
            )
            cache = _output_cache(out)
        self._prefixes[prefix] = cache
        while len(self._prefixes) > MAX_CACHED_PREFIXES:
            self._prefixes.pop(next(iter(self._prefixes)))
        return _fork_cache(cache)

    def _positions(self, inputs: dict[str, Any]) -> Any:
        """Position ids of a left-padded batch, computed as ``generate`` computes them (Qwen's
        multimodal rope included)."""
        prepare = getattr(self.model, "_prepare_position_ids_for_generation", None)
        if prepare is not None:
            return prepare(inputs["input_ids"], dict(inputs))
        mask = inputs["attention_mask"]
        return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)

    def __repr__(self) -> str:
        return f"LocalVLM({str(self.path)!r}, max_batch_size={self.max_batch_size})"


_PER_TOKEN_INPUTS = {"input_ids": None, "attention_mask": 1, "mm_token_type_ids": 0, "token_type_ids": 0}
"""Processor outputs with one value per prompt token, and the value an appended text token takes
(None: the token id itself)."""
_TOKEN_VALUES = ("input_ids", "mm_token_type_ids", "token_type_ids")  # sliced with the tokens they go with


def _append_tokens(inputs: dict[str, Any], extra: list[list[int]], pad_id: int, torch: Any) -> dict[str, Any]:
    """``inputs`` with ``extra[i]`` appended to row i's prompt tokens, left-padded again."""
    if not any(extra):
        return dict(inputs)
    mask = inputs["attention_mask"].bool()
    lengths = [int(m.sum()) + len(e) for m, e in zip(mask, extra, strict=True)]
    width = max(lengths)
    out = dict(inputs)
    for key, fill in _PER_TOKEN_INPUTS.items():
        if key not in inputs:
            continue
        values = inputs[key]
        padded = torch.full((len(extra), width), pad_id if key == "input_ids" else 0, dtype=values.dtype)
        padded = padded.to(values.device)
        for i, tokens in enumerate(extra):
            appended = tokens if fill is None else [fill] * len(tokens)
            appended_values = torch.tensor(appended, dtype=values.dtype).to(values.device)
            row = torch.cat([values[i][mask[i]], appended_values])
            padded[i, width - len(row) :] = row
        out[key] = padded
    return out


def _attention_kind(model: Any) -> str:
    """The attention implementation of the model's language half (``sdpa``, ``eager``, ...)."""
    text = model.config.get_text_config(decoder=True)
    return str(getattr(text, "_attn_implementation", None) or model.config._attn_implementation)


def _block_mask(attention: Any, owner: Any, n: int, additive: Any, torch: Any) -> Any:
    """The 4-D attention mask (requests, 1, queries, keys) of a prompt batch followed by a block of
    candidate suffixes, for a forward whose first ``n`` columns are already in the cache: boolean
    (True: attend, as sdpa takes it), or additive in dtype ``additive`` (as eager attention adds it).

    ``attention`` (requests, prompt width) marks each prompt's real tokens; ``owner`` (requests,
    block width) names the candidate each block token belongs to (-1: padding). A prompt token sees
    the real prompt tokens up to itself (causal, as usual); a block token sees its prompt's real
    tokens and the tokens of its own candidate up to itself, never another candidate's. Every query
    also sees itself, so that no row (a padding one) is masked entirely.
    """
    device = attention.device
    width = attention.shape[1]
    keys = torch.arange(width + owner.shape[1], device=device)
    queries = keys[n:]
    prompt_owner = torch.full_like(attention, -2, dtype=owner.dtype)
    key_owner = torch.cat([prompt_owner, owner], 1)  # -2: a prompt token
    key_real = torch.cat([attention.bool(), owner >= 0], 1)
    causal = keys[None, :] <= queries[:, None]
    same = (key_owner[:, n:, None] == key_owner[:, None, :]) | (key_owner[:, None, :] == -2)
    allowed = causal[None] & key_real[:, None, :] & same
    allowed |= keys[None, None, :] == queries[None, :, None]
    if additive is None:
        return allowed[:, None]
    mask = torch.zeros(allowed.shape, dtype=additive, device=device)
    return mask.masked_fill_(~allowed, torch.finfo(additive).min)[:, None]


def _candidate_totals(
    logp: Any, rows: Any, offsets: Any, suffixes: list[list[int]], end_ids: list[int], torch: Any
) -> Any:
    """log P(suffix, end | prompt + shared prefix) of each candidate, from ``logp`` laid out as
    :meth:`LocalVLM._one_pass` returns it: candidate n's token t (t >= 1) is predicted at
    ``logp[rows[n], offsets[n] + t]``, its first token and, for an empty suffix, its end at
    ``logp[rows[n], 0]``, its end after its last token at ``offsets[n] + len``."""
    device = logp.device
    lengths = torch.tensor([len(s) for s in suffixes], device=device)
    longest = max(len(s) for s in suffixes)
    total = torch.zeros(len(suffixes), device=device)
    if longest:
        tokens = torch.zeros((len(suffixes), longest), dtype=torch.long)
        for i, suffix in enumerate(suffixes):
            tokens[i, : len(suffix)] = torch.tensor(suffix, dtype=torch.long)
        tokens = tokens.to(device)
        t = torch.arange(longest, device=device)[None, :]
        inside = t < lengths[:, None]
        at = torch.where((t == 0) | ~inside, 0, offsets[:, None] + t)
        total = torch.where(inside, logp[rows[:, None], at, tokens], 0.0).sum(1)
    end_at = torch.where(lengths == 0, 0, offsets + lengths)
    end = torch.tensor(end_ids, device=device)
    return total + torch.logsumexp(logp[rows, end_at][:, end], -1)


def _pad_after(inputs: dict[str, Any], n: int, pad_id: int, torch: Any) -> dict[str, Any]:
    """``inputs`` laid out as each row's first ``n`` tokens, then the row's padding, then the rest."""
    mask = inputs["attention_mask"].bool()
    out = dict(inputs)
    for key in _PER_TOKEN_INPUTS:
        if key not in inputs:
            continue
        values = inputs[key]
        fill = pad_id if key == "input_ids" else 0
        padded = torch.full_like(values, fill)
        for i in range(values.shape[0]):
            row = values[i][mask[i]]
            padded[i, :n] = row[:n]
            padded[i, values.shape[1] - (len(row) - n) :] = row[n:]
        out[key] = padded
    return out


def _fork_cache(cache: Any) -> Any:
    """A copy of ``cache`` that can grow and be re-batched without changing ``cache``.

    Dynamic cache layers never write into their tensors (they concatenate, repeat and index into
    new ones), so fresh layer objects holding the same tensors suffice; any other kind is copied.
    """
    layers = getattr(cache, "layers", None)
    if type(cache).__name__ != "DynamicCache" or not isinstance(layers, list):
        return copy.deepcopy(cache)
    if any(type(layer).__name__ not in _GROWING_LAYERS for layer in layers):
        return copy.deepcopy(cache)
    fork = copy.copy(cache)
    fork.layers = [copy.copy(layer) for layer in layers]
    return fork


_GROWING_LAYERS = ("DynamicLayer", "DynamicSlidingWindowLayer")
"""transformers' cache layers that replace their tensors rather than write into them."""


def _output_cache(output: Any) -> Any:
    """The KV cache a forward returned (``cache`` from transformers 5.24, ``past_key_values`` before)."""
    for name in ("cache", "past_key_values"):
        cache = output.get(name)
        if cache is not None:
            if not hasattr(cache, "batch_select_indices"):
                kind = type(cache).__name__
                raise ModelError(f"scoring needs a KV cache whose rows can be selected, got {kind}")
            return cache
    raise ModelError("the model returned no KV cache to score the choices with")


def _stop_at_marker(tokenizer: Any, marker: re.Pattern[str], prompt_len: int) -> Any:
    """A stopping criterion for ``generate``: a row is done once its answer so far holds ``marker``."""
    t = require("transformers", extra="local")
    torch = require("torch", extra="local")
    tail = 16  # tokens re-decoded each step: enough for any marker, and cheap

    class StopAtMarker(t.StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            start = max(prompt_len, input_ids.shape[1] - tail)
            texts = tokenizer.batch_decode(input_ids[:, start:], skip_special_tokens=True)
            return torch.tensor([bool(marker.search(text)) for text in texts], device=input_ids.device)

    return t.StoppingCriteriaList([StopAtMarker()])
