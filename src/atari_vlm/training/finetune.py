"""Supervised fine-tuning of a local VLM on good play: filtered behaviour cloning.

The data are stored trajectories (:class:`~atari_vlm.memory.TrajectoryStore`: expert or human
demonstrations, or the model's own episodes). **Filter**: the ``top_k`` episodes by return are kept,
every step of them (filtered behaviour cloning on the best episodes; per-step advantages are not
used). **Examples**: for each kept step, the request the model would get in play is rebuilt with
:meth:`atari_vlm.prompts.builder.PromptBuilder.request` from an observation made of the stored image and state
text, rendered with the checkpoint's chat template by the very code that renders it in play
(:meth:`atari_vlm.models.local.LocalVLM.render`) and tokenized as in play; the target is
``"ACTION: <name>"`` plus the end-of-sequence token, and the loss is on the target tokens only.
(Play adds a feedback line after an unparsable answer; stored steps do not record it, so examples
are the prompts of a player whose answers parse, as demonstrations' always do.) **Batches** are
padded on the right, with every output of the family's processor kept: per-token ones (Qwen's
``mm_token_type_ids``) padded like the ids, image tensors zero-padded and concatenated (Qwen's
flattened patches and ``image_grid_thw``, LLaVA-NeXT's patches, Idefics' pixel masks).

**Saving**: with LoRA (peft, the default) ``out_dir`` is an adapter directory: ``adapter_model.safetensors``,
``adapter_config.json`` whose ``base_model_name_or_path`` is the base checkpoint's absolute path, a copy
of the base's processor and chat-template files (for reference; the base's are loaded), and
``atari_vlm_finetune.json`` (what was trained on, the losses). :class:`~atari_vlm.models.local.LocalVLM`
recognises the adapter, loads the base and merges the adapter, so ``--model <out_dir>`` plays with it.
Fine-tuning an adapter directory again continues that adapter (same base). With ``lora=False`` all
weights are trained and ``out_dir`` is a full checkpoint (safetensors).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from atari_vlm.errors import ConfigError, require
from atari_vlm.games import game_info, resolve_game
from atari_vlm.imaging import to_pil, to_rgb
from atari_vlm.memory import Trajectory, TrajectoryStore, is_game_folder
from atari_vlm.models.local import LocalVLM, adapter_base
from atari_vlm.prompts.builder import PromptBuilder
from atari_vlm.spec import ObservationSpec, PromptSpec

__all__ = [
    "IGNORE_INDEX",
    "Example",
    "FinetuneResult",
    "build_examples",
    "finetune",
    "resolve_base",
    "select_best",
]

IGNORE_INDEX = -100  # label of the prompt and padding tokens: no loss there
FINETUNE_RECORD = "atari_vlm_finetune.json"
# LoRA goes on the language model's attention and MLP projections (the vision tower is left alone).
LORA_TARGETS = r".*(language_model|text_model)\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
_WEIGHT_FILES = (
    "atari_vlm_demo.json",
    "DEMO_README.txt",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
)


@dataclass
class Example:
    """One training example: the play-time prompt (as text and token ids), its images, the target."""

    prompt: str
    target: str
    images: list[Any]  # PIL images, in prompt order
    input_ids: list[int] = field(default_factory=list)  # prompt + target + eos
    prompt_len: int = 0
    image_inputs: dict[str, Any] = field(default_factory=dict)  # pixel tensors from the processor
    # Per-token processor outputs (Qwen's mm_token_type_ids...), one entry per id of input_ids.
    token_inputs: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class FinetuneResult:
    """What a fine-tuning run did; ``out_dir`` loads with ``--model``."""

    losses: list[float]  # one per optimizer step
    steps: int
    wall_s: float  # the whole call: loading, building the examples, training, saving
    out_dir: Path
    examples: int = 0
    episodes: list[str] = field(default_factory=list)  # the episode ids trained on
    cpu_s: float = 0.0  # CPU time of this process over the call (all threads)
    train_s: float = 0.0  # wall time of the optimizer steps alone


def select_best(trajectories: Sequence[Trajectory], top_k: int | None) -> list[Trajectory]:
    """The ``top_k`` trajectories by return (ties: by episode id); all of them when ``top_k`` is None."""
    ranked = sorted(trajectories, key=lambda t: (-t.meta.episode_return, t.meta.episode_id))
    return ranked if top_k is None else ranked[:top_k]


def _load_data(
    data: str | Path | TrajectoryStore | Sequence[Trajectory], game: str | None
) -> list[Trajectory]:
    """Trajectories from a store (a root: every game in it, or ``game``), a store's game folder (the
    folder ``atari-vlm record`` prints, e.g. ``demos/Pong``), or a sequence of trajectories."""
    if isinstance(data, (str, Path, TrajectoryStore)):
        store = data if isinstance(data, TrajectoryStore) else TrajectoryStore(Path(data).expanduser())
        if not store.root.is_dir():
            raise ConfigError(
                f"no trajectories at {store.root}: expected a trajectory store directory "
                "(atari-vlm record --out) or one of its game folders"
            )
        if is_game_folder(store.root):
            if game is not None and resolve_game(game) != resolve_game(store.root.name):
                raise ConfigError(f"{store.root} holds {store.root.name} episodes, not {game}")
            store, game = TrajectoryStore(store.root.parent), store.root.name
        games = (
            [game]
            if game
            else sorted(p.name for p in store.root.iterdir() if p.is_dir() and p.name[0] != ".")
        )
        trajectories = [store.load(g, m.episode_id) for g in games for m in store.episodes(g)]
    else:
        trajectories = list(data)
        if game:
            trajectories = [t for t in trajectories if t.meta.game == game]
    if not trajectories:
        raise ConfigError(
            f"no trajectories to fine-tune on in {data if isinstance(data, (str, Path)) else 'data'}"
        )
    return trajectories


def resolve_base(model: str | Path) -> Path:
    """The checkpoint directory ``model`` names: ``"demo"`` is the demo checkpoint (built on first
    use, as ``--model demo`` plays it), anything else a directory path."""
    if str(model) == "demo":
        from atari_vlm.models.tiny import demo_checkpoint

        return demo_checkpoint()
    return Path(model).expanduser()


def _builder_for(
    trajectory: Trajectory, prompt_style: str, frame_stack: int, frame_layout: str
) -> PromptBuilder:
    """The prompt builder play uses for this trajectory's game: it builds the play-time requests."""
    return PromptBuilder(
        game_info(trajectory.meta.game),
        list(trajectory.meta.action_names),
        PromptSpec(prompt=prompt_style),
        ObservationSpec(frame_stack=frame_stack, frame_layout=frame_layout),
    )


def build_examples(
    vlm: LocalVLM,
    trajectories: Sequence[Trajectory],
    *,
    prompt_style: str = "basic",
    frame_stack: int = 1,
    frame_layout: str = "grid",
    max_examples: int | None = None,
    seed: int = 0,
    tokenize: bool = True,
) -> list[Example]:
    """Training examples from every step of ``trajectories`` (filter them first: :func:`select_best`).

    The stored image is the observation's ``image`` (a grid of ``frame_stack`` frames when it was
    recorded so), so ``frame_layout="sequence"`` with several frames cannot be rebuilt and is refused.
    ``max_examples`` keeps a seeded uniform sample of the steps.
    """
    if frame_layout == "sequence" and frame_stack > 1:
        raise ConfigError("stored steps hold one image per decision; use frame_layout='grid' to fine-tune")
    builders: dict[tuple[str, tuple[str, ...]], PromptBuilder] = {}
    index = [(t, i) for t in trajectories for i in range(len(t.steps))]
    if max_examples is not None and max_examples < len(index):
        keep = np.sort(np.random.default_rng(seed).choice(len(index), max_examples, replace=False))
        index = [index[k] for k in keep]
    examples = []
    for trajectory, i in index:
        key = (trajectory.meta.game, trajectory.meta.action_names)
        if key not in builders:
            builders[key] = _builder_for(trajectory, prompt_style, frame_stack, frame_layout)
        step = trajectory.steps[i]
        image = np.asarray(trajectory.frames[i])
        obs = {"image": image, "frames": image[None], "text": step.state_text}
        request = builders[key].request(obs)
        prompt = vlm.render(request.messages)
        images = [to_pil(to_rgb(p.pixels)) for m in request.messages for p in m.images]
        example = Example(prompt, f"ACTION: {step.action_name}", images)
        if tokenize:
            _tokenize(vlm, example)
        examples.append(example)
    return examples


def _tokenize(vlm: LocalVLM, example: Example) -> None:
    """Prompt ids exactly as play encodes them (LocalVLM._generate_batch), then target ids and EOS.

    The processor's other outputs are kept: those with one entry per prompt token (Qwen's
    ``mm_token_type_ids``) are extended over the target with 0 (text), the rest are image tensors.
    """
    tokenizer = vlm.tokenizer
    bos = tokenizer.bos_token
    kwargs: dict[str, Any] = {
        "text": [example.prompt],
        "add_special_tokens": not (bos and example.prompt.startswith(bos)),
    }
    if example.images:
        kwargs["images"] = [example.images]
    inputs = dict(vlm.processor(**kwargs, return_tensors="pt"))
    prompt_ids = inputs.pop("input_ids")[0].tolist()
    inputs.pop("attention_mask", None)
    target_ids = tokenizer(example.target, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    example.input_ids = [*prompt_ids, *target_ids, eos]
    example.prompt_len = len(prompt_ids)
    tail = [0] * (len(target_ids) + 1)
    for key, value in inputs.items():
        if getattr(value, "ndim", None) == 2 and tuple(value.shape) == (1, len(prompt_ids)):
            example.token_inputs[key] = [*value[0].tolist(), *tail]
        else:
            example.image_inputs[key] = value


def _stack_images(values: Sequence[Any], key: str, torch: Any) -> Any:
    """One image input of a batch from the examples' own: tensors zero-padded to a common shape past
    the first dimension (as the processors pad images, patches and pixel masks in a batch), then
    concatenated along it (per image: Qwen's flattened patches and ``image_grid_thw`` rows)."""
    if all(isinstance(v, list) for v in values):
        return [item for v in values for item in v]
    if not all(isinstance(v, torch.Tensor) for v in values) or len({v.ndim for v in values}) != 1:
        raise ConfigError(f"cannot batch the processor's {key!r} output: {type(values[0]).__name__}")
    if values[0].ndim == 0:
        return torch.stack(list(values))
    shape = [max(v.shape[d] for v in values) for d in range(1, values[0].ndim)]
    padded = []
    for v in values:
        pad: list[int] = []
        for d in reversed(range(1, v.ndim)):
            pad += [0, shape[d - 1] - v.shape[d]]
        padded.append(torch.nn.functional.pad(v, pad) if any(pad) else v)
    return torch.cat(padded)


def _collate(examples: Sequence[Example], pad_id: int, torch: Any) -> dict[str, Any]:
    """A training batch, padded on the right: ids, attention mask, labels (-100 on prompt and
    padding), the per-token processor outputs (0 on padding) and the image inputs (see
    :func:`_stack_images`). Right padding keeps each prompt where play puts it, at position 0."""
    length = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    tokens = {key: torch.zeros((len(examples), length), dtype=torch.long) for key in examples[0].token_inputs}
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        mask[row, :n] = 1
        labels[row, e.prompt_len : n] = ids[row, e.prompt_len : n]
        for key, values in e.token_inputs.items():
            tokens[key][row, :n] = torch.tensor(values)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels, **tokens}
    for key in examples[0].image_inputs:
        batch[key] = _stack_images([e.image_inputs[key] for e in examples], key, torch)
    return batch


def _to_device(batch: dict[str, Any], model: Any) -> dict[str, Any]:
    return {
        k: (v.to(model.device, dtype=model.dtype) if v.is_floating_point() else v.to(model.device))
        if hasattr(v, "is_floating_point")
        else v
        for k, v in batch.items()
    }


def _lora(model: Any, adapter_dir: Path | None, rank: int) -> Any:
    peft = require("peft", extra="finetune")
    if adapter_dir is not None:  # continue training an adapter
        return peft.PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
    config = peft.LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=LORA_TARGETS)
    return peft.get_peft_model(model, config)


def _copy_processor_files(base: Path, out: Path) -> None:
    """The base's processor, tokenizer and chat-template files (not its weights, model config, or the
    random-weights marker of a demo checkpoint: the result is trained)."""
    for entry in base.iterdir():
        if entry.is_file() and entry.name not in _WEIGHT_FILES and not entry.name.endswith(".safetensors"):
            shutil.copy2(entry, out / entry.name)


def _check(name: str, value: Any, low: float, kind: type = int) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float) if kind is float else int)
        or value < low
    ):
        raise ConfigError(
            f"{name} must be {'a number' if kind is float else 'an integer'} >= {low}, got {value!r}"
        )


def finetune(
    model_dir: str | Path,
    data: str | Path | TrajectoryStore | Sequence[Trajectory],
    out_dir: str | Path,
    *,
    lora: bool = True,
    epochs: int = 1,
    lr: float | None = None,
    batch_size: int = 8,
    top_k: int | None = 5,
    seed: int = 0,
    game: str | None = None,
    prompt_style: str = "basic",
    frame_stack: int = 1,
    frame_layout: str = "grid",
    max_examples: int | None = None,
    lora_rank: int = 16,
    device: str = "cpu",
    on_start: Callable[[int, int], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> FinetuneResult:
    """Fine-tune the checkpoint (or adapter) in ``model_dir`` on the best trajectories of ``data``.

    ``model_dir``: a checkpoint or adapter directory, or ``"demo"`` (the demo checkpoint).
    ``data``: a trajectory store directory (every game in it, or ``game``), one of its game folders,
    a store, or trajectories.
    ``lr`` defaults to 1e-3 for LoRA and 1e-4 for full fine-tuning. ``prompt_style``, ``frame_stack``
    and ``frame_layout`` must be those the model will play with. ``on_start(total_steps, examples)``
    is called once the examples are built, ``on_step(step, loss)`` after each optimizer step.
    Returns the per-step losses, the step count, the wall and CPU times and ``out_dir``.

    Raises:
        ConfigError: a bad setting, no data, ``out_dir`` not empty, peft missing for LoRA.
    """
    _check("epochs", epochs, 1)
    _check("batch_size", batch_size, 1)
    _check("lora_rank", lora_rank, 1)
    if top_k is not None:
        _check("top_k", top_k, 1)
    if max_examples is not None:
        _check("max_examples", max_examples, 1)
    start, cpu_start = time.perf_counter(), time.process_time()
    lr = lr if lr is not None else (1e-3 if lora else 1e-4)
    _check("lr", lr, 0.0, float)
    if lora:
        require("peft", extra="finetune")
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already exists and is not an empty directory; pass a new directory")
    trajectories = select_best(_load_data(data, game), top_k)
    model_path = resolve_base(model_dir)
    base = adapter_base(model_path) if model_path.is_dir() else None

    torch = require("torch", extra="local")
    torch.manual_seed(seed)
    # The adapter's base when continuing an adapter with LoRA; otherwise LocalVLM merges it in.
    vlm = LocalVLM(base if (lora and base is not None) else model_path, device=device, dtype="float32")
    examples = build_examples(
        vlm,
        trajectories,
        prompt_style=prompt_style,
        frame_stack=frame_stack,
        frame_layout=frame_layout,
        max_examples=max_examples,
        seed=seed,
    )
    model = _lora(vlm.model, model_path if base is not None else None, lora_rank) if lora else vlm.model
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    steps_per_epoch = math.ceil(len(examples) / batch_size)
    total = epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, total // 20)))
    pad_id = vlm.tokenizer.pad_token_id
    if on_start is not None:
        on_start(total, len(examples))
    losses: list[float] = []
    train_start = time.perf_counter()
    for _ in range(epochs):
        order = rng.permutation(len(examples))
        for b in range(steps_per_epoch):
            batch = _collate(
                [examples[k] for k in order[b * batch_size : (b + 1) * batch_size]], pad_id, torch
            )
            loss = model(**_to_device(batch, model)).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(len(losses), losses[-1])
    train_s = time.perf_counter() - train_start
    model.eval()
    record = {
        "base": str((base or model_path).resolve()),
        "lora": lora,
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "top_k": top_k,
        "seed": seed,
        "prompt_style": prompt_style,
        "frame_stack": frame_stack,
        "frame_layout": frame_layout,
        "examples": len(examples),
        "episodes": [
            {"game": t.meta.game, "id": t.meta.episode_id, "return": t.meta.episode_return}
            for t in trajectories
        ],
        "losses": [round(x, 5) for x in losses],
        "train_s": round(train_s, 3),
        "transformers": require("transformers", extra="local").__version__,
    }
    _save(model, vlm, out, record, lora=lora, base=(base or model_path).resolve())
    return FinetuneResult(
        losses=losses,
        steps=len(losses),
        wall_s=time.perf_counter() - start,
        out_dir=out,
        examples=len(examples),
        episodes=[t.meta.episode_id for t in trajectories],
        cpu_s=time.process_time() - cpu_start,
        train_s=train_s,
    )


def _save(model: Any, vlm: LocalVLM, out: Path, record: dict[str, Any], *, lora: bool, base: Path) -> None:
    """Write into a temporary sibling, then rename: a crash leaves no half-written model behind."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _copy_processor_files(base, tmp)
        model.save_pretrained(tmp, safe_serialization=True)  # LoRA: the adapter only; else all weights
        if lora:
            config_path = tmp / "adapter_config.json"
            config = json.loads(config_path.read_text(encoding="utf-8"))
            config["base_model_name_or_path"] = str(base)
            config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        (tmp / FINETUNE_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
