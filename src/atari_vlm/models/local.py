"""An in-process Hugging Face vision-language model with dynamic batching.

Agents call :meth:`LocalVLM.generate` one request at a time, often from many environments at once.
One padded ``model.generate`` over several prompts costs little more than one over a single prompt,
so concurrent calls are queued and a background task runs them together: it takes up to
``max_batch_size`` requests, waiting at most ``max_wait_s`` after the first, and runs the batch in a
worker thread so the event loop keeps stepping emulators meanwhile.

torch and transformers are imported lazily (the ``local`` extra); weights load from safetensors only,
never from pickles.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from atari_vlm.errors import ConfigError, DependencyNotInstalled, ModelError, require
from atari_vlm.imaging import to_pil, to_rgb
from atari_vlm.models.base import Completion, ImagePart, Message, Request, Usage

__all__ = [
    "DTYPES",
    "QUANTIZE_CHOICES",
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


@dataclass
class _Pending:
    """One queued request: its rendered prompt, its images and videos, and the caller's future."""

    request: Request
    prompt: str
    images: list[Any]
    videos: list[list[Any]]
    future: asyncio.Future[Completion]
    queued_at: float = field(default_factory=time.perf_counter)

    @property
    def settings(self) -> tuple[int, float, bool, tuple[int, ...]]:
        """Requests batch together only when ``generate`` would treat them alike (videos stack into
        one tensor, so their frame counts must match)."""
        frames = tuple(len(v) for v in self.videos)
        return (self.request.max_tokens, self.request.temperature, bool(self.images), frames)


@dataclass
class _Row:
    text: str
    usage: Usage
    finish_reason: str


class _Batcher:
    """The queue and background task of one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: list[_Pending] = []
        self.wakeup = asyncio.Event()
        self.full = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class LocalVLM:
    """A local image-text-to-text checkpoint behind the :class:`~atari_vlm.models.base.VLM` protocol."""

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
        pending = _Pending(request, prompt, images, videos, batcher.loop.create_future())
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
                batcher.full.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(batcher.full.wait(), self.max_wait_s)
            batch = batcher.pending[: self.max_batch_size]
            del batcher.pending[: self.max_batch_size]
            groups: dict[tuple[int, float, bool, tuple[int, ...]], list[_Pending]] = {}
            for pending in batch:
                groups.setdefault(pending.settings, []).append(pending)
            for group in groups.values():
                await self._run_group(group)

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
                    )
                )

    @staticmethod
    def _fail(batch: list[_Pending], exc: BaseException) -> None:
        """Every caller still waiting on ``batch`` gets ``exc``."""
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(exc)

    def _generate_batch(self, batch: list[_Pending]) -> list[_Row]:
        """One padded (left) ``model.generate`` over the batch; runs in a worker thread."""
        torch = self._torch
        request = batch[0].request  # the group shares max_tokens and temperature
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
        inputs = {
            k: v.to(self.model.device, dtype=self.model.dtype)
            if v.is_floating_point()
            else v.to(self.model.device)
            for k, v in inputs.items()
        }
        sampling: dict[str, Any] = {"do_sample": False}
        if request.temperature > 0:
            sampling = {"do_sample": True, "temperature": request.temperature}
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                max_new_tokens=request.max_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                **sampling,
            )
        prompt_len = inputs["input_ids"].shape[1]
        rows = []
        for i in range(len(batch)):
            new = output[i, prompt_len:].tolist()
            end = next((j + 1 for j, tok in enumerate(new) if tok in self._eos_ids), None)
            tokens = new if end is None else new[:end]
            prompt_ids = inputs["input_ids"][i]
            vision_ids = {self._image_token_id, self._video_token_id} - {None}
            image_tokens = None
            if vision_ids:
                image_tokens = sum(int((prompt_ids == token).sum()) for token in vision_ids)
            rows.append(
                _Row(
                    text=self.tokenizer.decode(tokens, skip_special_tokens=True),
                    usage=Usage(
                        input_tokens=int(inputs["attention_mask"][i].sum()),
                        output_tokens=len(tokens),
                        image_tokens=image_tokens,
                    ),
                    finish_reason="length" if end is None else "stop",
                )
            )
        return rows

    def __repr__(self) -> str:
        return f"LocalVLM({str(self.path)!r}, max_batch_size={self.max_batch_size})"
