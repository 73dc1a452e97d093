"""The in-process backend on tiny random-weight checkpoints of every supported family.

The checkpoints are built offline in a second or two each (``atari_vlm.models.tiny``), so these tests
run the real transformers code path (processor, chat template, vision tower, ``generate``) with no
download. Batching is checked by counting ``model.generate`` calls, never by timing.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from atari_vlm.errors import ConfigError, DependencyNotInstalled, ModelError
from atari_vlm.models.base import VLM, Completion, ImagePart, Message, Request, TextPart
from atari_vlm.prompts import parse_action

pytest.importorskip("torch")
pytest.importorskip("transformers")

from atari_vlm.models import tiny
from atari_vlm.models.local import JSON_ANSWER, LINE_ANSWER, FramesVideoProcessor, LocalVLM

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {family: tiny.build_tiny_checkpoint(family, root / family) for family in tiny.TINY_FAMILIES}


@pytest.fixture(scope="session")
def vlms(checkpoints: dict[str, Path]) -> Iterator[dict[str, LocalVLM]]:
    models = {family: LocalVLM(path, max_batch_size=8) for family, path in checkpoints.items()}
    yield models
    for vlm in models.values():
        asyncio.run(vlm.aclose())


@pytest.fixture(params=tiny.TINY_FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def vlm(vlms: dict[str, LocalVLM], family: str) -> LocalVLM:
    return vlms[family]


def frame(seed: int) -> np.ndarray:
    """An Atari-sized RGB frame."""
    return np.random.default_rng(seed).integers(0, 256, size=(210, 160, 3), dtype=np.uint8)


def make_request(
    seed: int = 0,
    images: int = 1,
    max_tokens: int = 6,
    temperature: float = 0.0,
    system: str = "You are playing Pong.",
    **fields: Any,
) -> Request:
    """System + user turn; the text length varies with ``seed`` so that batches need padding."""
    parts = [ImagePart(frame(seed * 10 + i)) for i in range(images)]
    text = "Legal actions: NOOP, FIRE, UP, DOWN. " + "Think. " * seed + "Reply ACTION: <action>"
    return Request(
        (
            Message.text("system", system),
            Message("user", (*parts, TextPart(text))),
        ),
        max_tokens=max_tokens,
        temperature=temperature,
        **fields,
    )


def count_generate(monkeypatch: pytest.MonkeyPatch, vlm: LocalVLM, fail: bool = False) -> list[int]:
    """Wrap ``model.generate``: the returned list gets each call's batch size."""
    calls: list[int] = []
    real: Callable[..., Any] = vlm.model.generate

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(int(kwargs["input_ids"].shape[0]))
        if fail:
            raise RuntimeError("boom inside generate")
        return real(*args, **kwargs)

    monkeypatch.setattr(vlm.model, "generate", wrapper)
    return calls


def check_usage(completion: Completion, request: Request) -> None:
    usage = completion.usage
    assert usage.input_tokens > 0
    assert usage.image_tokens is not None and usage.image_tokens > 0
    assert usage.input_tokens > usage.image_tokens
    assert 1 <= usage.output_tokens <= request.max_tokens
    assert completion.finish_reason in ("stop", "length")
    if completion.finish_reason == "length":
        assert usage.output_tokens == request.max_tokens
    assert completion.latency_s > 0


# --- the checkpoints ---


def test_checkpoint_is_safetensors_with_markers(checkpoints: dict[str, Path], family: str) -> None:
    path = checkpoints[family]
    names = {p.name for p in path.iterdir()}
    assert "model.safetensors" in names and "config.json" in names
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in names)
    assert json.loads((path / tiny.DEMO_MARKER).read_text())["atari_vlm_demo"] is True
    assert "RANDOM" in (path / tiny.DEMO_README).read_text()
    assert not [p for p in path.parent.iterdir() if ".tmp-" in p.name]  # nothing half-written left


def test_checkpoint_loads_with_auto_classes(checkpoints: dict[str, Path], family: str) -> None:
    import transformers

    path = checkpoints[family]
    model = transformers.AutoModelForImageTextToText.from_pretrained(path, use_safetensors=True)
    assert model.config.get_text_config().hidden_size <= 64
    has_video = "video_processor" in json.loads((path / "processor_config.json").read_text())
    if has_video and not HAS_TORCHVISION:
        pytest.skip("AutoProcessor needs torchvision for this family's video processor (LocalVLM falls back)")
    processor = transformers.AutoProcessor.from_pretrained(path)
    assert processor.chat_template


@pytest.mark.skipif(HAS_TORCHVISION, reason="the fallback is only taken without torchvision")
def test_video_families_load_with_a_torchvision_free_video_processor(vlms: dict[str, LocalVLM]) -> None:
    for family in ("qwen2_vl", "qwen2_5_vl", "video_llava"):
        processor = vlms[family].processor
        assert isinstance(processor.video_processor, FramesVideoProcessor)
        assert (
            type(processor).__name__
            == json.loads((vlms[family].path / "processor_config.json").read_text())["processor_class"]
        )


# --- Video-LLaVA: the frame stack goes in as one video ---


def stack_request(frames: int, *, exemplar: bool = False, seed: int = 0) -> Request:
    """A frame stack laid out as a sequence (consecutive images), optionally after an exemplar image."""
    parts: list[Any] = [TextPart("Example:"), ImagePart(frame(99)), TextPart("Now:")] if exemplar else []
    parts += [ImagePart(frame(seed + i)) for i in range(frames)]
    parts.append(TextPart("Reply with ACTION: <name>."))
    return Request(
        messages=(Message.text("system", "You play Pong."), Message("user", tuple(parts))), max_tokens=4
    )


def test_video_llava_takes_the_frame_stack_as_one_video(vlms: dict[str, LocalVLM]) -> None:
    vlm = vlms["video_llava"]
    assert vlm.frames_as_video
    prompt = vlm.render(stack_request(4, exemplar=True).messages)
    assert prompt.count("<video>") == 1 and prompt.count("<image>") == 1
    single = vlms["llava"].render(stack_request(4).messages)
    assert single.count("<image>") == 4 and "<video>" not in single  # image models: four images


def test_video_llava_counts_video_tokens_and_batches_equal_stacks(
    vlms: dict[str, LocalVLM], monkeypatch: pytest.MonkeyPatch
) -> None:
    vlm = vlms["video_llava"]
    sizes = count_generate(monkeypatch, vlm)

    async def run() -> list[Completion]:
        requests = [stack_request(4, seed=i) for i in range(3)] + [stack_request(2, exemplar=True)]
        return await asyncio.gather(*(vlm.generate(r) for r in requests))

    completions = asyncio.run(run())
    # 28 px frames, 14 px patches: 4 patches + CLS = 5 tokens per video frame, 4 per image.
    assert [c.usage.image_tokens for c in completions] == [20, 20, 20, 4 + 10]
    assert sorted(sizes) == [1, 3]  # stacks of 4 frames batch together; the 2-frame one cannot


def test_frames_video_processor_matches_the_image_processor(vlms: dict[str, LocalVLM]) -> None:
    from PIL import Image

    processor = vlms["video_llava"].processor
    clips = [[Image.fromarray(frame(i + j)) for j in range(3)] for i in range(2)]
    videos = processor.video_processor(clips, return_tensors="pt")["pixel_values_videos"]
    assert tuple(videos.shape) == (2, 3, 3, 28, 28)
    one = processor.image_processor(images=[clips[1][2]], return_tensors="pt")
    pixels = one["pixel_values_images"] if "pixel_values_images" in one else one["pixel_values"]
    assert np.allclose(videos[1, 2].numpy(), pixels[0].numpy())
    with pytest.raises(ModelError, match="equal frame counts"):
        processor.video_processor([clips[0], clips[1][:2]], return_tensors="pt")


def test_action_words_are_in_the_vocabulary(vlm: LocalVLM) -> None:
    vocab = vlm.tokenizer.get_vocab()
    assert {"NOOP", "FIRE"} <= {w.lstrip("Ġ") for w in vocab}


def test_build_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("keep me")
    with pytest.raises(ConfigError, match="not an empty directory"):
        tiny.build_tiny_checkpoint("llava", tmp_path / "x")
    with pytest.raises(ConfigError, match="unknown tiny family"):
        tiny.build_tiny_checkpoint("gpt2", tmp_path / "y")


# --- generation ---


def test_is_a_vlm(vlm: LocalVLM) -> None:
    assert isinstance(vlm, VLM)


def test_generate_one_and_two_images(vlm: LocalVLM) -> None:
    one, two = make_request(images=1), make_request(images=2)

    async def run() -> tuple[Completion, Completion]:
        return await vlm.generate(one), await vlm.generate(two)

    c1, c2 = asyncio.run(run())
    for completion, request in ((c1, one), (c2, two)):
        assert isinstance(completion.text, str)
        check_usage(completion, request)
        assert completion.model == vlm.name
    if vlm.frames_as_video:  # two consecutive frames are one video, whose frames keep their CLS token
        assert c2.usage.image_tokens == 2 * (c1.usage.image_tokens + 1)
    else:
        assert c2.usage.image_tokens == 2 * c1.usage.image_tokens  # same frame size, twice the frames


def test_text_only_request(vlm: LocalVLM) -> None:
    request = Request((Message.text("user", "ACTION:"),), max_tokens=3)
    completion = asyncio.run(vlm.generate(request))
    assert completion.usage.image_tokens == 0
    assert 1 <= completion.usage.output_tokens <= 3


def test_sampling_respects_max_tokens(vlm: LocalVLM) -> None:
    request = make_request(max_tokens=4, temperature=1.0)
    completion = asyncio.run(vlm.generate(request))
    check_usage(completion, request)


def test_system_turn_reaches_the_prompt(vlm: LocalVLM) -> None:
    """Templates without a system role (the Mistral-style llava_next one) get it folded into the user turn."""
    prompt = vlm._render(make_request().messages)
    assert prompt.index("You are playing Pong.") < prompt.index("Legal actions")


def test_concurrent_requests_share_one_generate_and_match_sequential(
    vlm: LocalVLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests = [make_request(seed) for seed in range(4)]
    calls = count_generate(monkeypatch, vlm)

    async def run() -> tuple[list[Completion], list[Completion]]:
        batched = await asyncio.gather(*(vlm.generate(r) for r in requests))
        sequential = [await vlm.generate(r) for r in requests]
        return list(batched), sequential

    batched, sequential = asyncio.run(run())
    assert calls == [4, 1, 1, 1, 1]
    assert [c.text for c in batched] == [c.text for c in sequential]
    assert [c.usage for c in batched] == [c.usage for c in sequential]
    assert len({c.usage.input_tokens for c in batched}) > 1  # the batch really was padded


def test_different_settings_are_batched_separately(
    vlms: dict[str, LocalVLM], monkeypatch: pytest.MonkeyPatch
) -> None:
    vlm = vlms["llava"]
    calls = count_generate(monkeypatch, vlm)
    requests = [make_request(0, max_tokens=3), make_request(1, max_tokens=5), make_request(2, max_tokens=3)]

    async def run() -> list[Completion]:
        return list(await asyncio.gather(*(vlm.generate(r) for r in requests)))

    completions = asyncio.run(run())
    assert sorted(calls) == [1, 2]
    for completion, request in zip(completions, requests, strict=True):
        assert 1 <= completion.usage.output_tokens <= request.max_tokens


def test_max_batch_size_is_respected(vlms: dict[str, LocalVLM], monkeypatch: pytest.MonkeyPatch) -> None:
    vlm = vlms["qwen2_vl"]
    monkeypatch.setattr(vlm, "max_batch_size", 2)
    calls = count_generate(monkeypatch, vlm)

    async def run() -> list[Completion]:
        return list(await asyncio.gather(*(vlm.generate(make_request(s, max_tokens=2)) for s in range(5))))

    completions = asyncio.run(run())
    assert calls == [2, 2, 1]
    assert all(c.usage.output_tokens >= 1 for c in completions)


def test_an_error_in_generate_reaches_every_caller(
    vlms: dict[str, LocalVLM], monkeypatch: pytest.MonkeyPatch
) -> None:
    vlm = vlms["llava"]
    calls = count_generate(monkeypatch, vlm, fail=True)

    async def run() -> list[Any]:
        coros = (vlm.generate(make_request(s)) for s in range(3))
        return list(await asyncio.gather(*coros, return_exceptions=True))

    results = asyncio.run(run())
    assert calls == [3]
    assert all(isinstance(r, RuntimeError) and "boom" in str(r) for r in results)
    monkeypatch.undo()
    assert asyncio.run(vlm.generate(make_request())).usage.output_tokens >= 1  # the batcher survived


def test_closed_model_refuses_requests(checkpoints: dict[str, Path]) -> None:
    vlm = LocalVLM(checkpoints["llava"])

    async def run() -> None:
        await vlm.generate(make_request(max_tokens=1))
        await vlm.aclose()
        await vlm.aclose()
        with pytest.raises(ModelError, match="closed"):
            await vlm.generate(make_request())

    asyncio.run(run())


def test_aclose_answers_callers_in_flight_and_queued(checkpoints: dict[str, Path]) -> None:
    vlm = LocalVLM(checkpoints["llava"])
    started, release = threading.Event(), threading.Event()
    real = vlm.model.generate

    def blocked(*args: Any, **kwargs: Any) -> Any:
        started.set()
        release.wait(30)
        return real(*args, **kwargs)

    vlm.model.generate = blocked

    async def run() -> None:
        in_flight = asyncio.ensure_future(vlm.generate(make_request(0)))
        await asyncio.to_thread(started.wait, 30)
        queued = asyncio.ensure_future(vlm.generate(make_request(1)))
        await asyncio.sleep(0)
        await vlm.aclose()
        release.set()
        for task in (in_flight, queued):
            with pytest.raises(ModelError, match="closed before answering"):
                await task

    asyncio.run(run())


# --- configuration errors ---


def test_bad_paths_give_config_errors(tmp_path: Path) -> None:
    (tmp_path / "file.safetensors").write_bytes(b"")
    for path in (tmp_path / "missing", tmp_path / "file.safetensors", tmp_path):
        with pytest.raises(ConfigError, match=r"checkpoint directory containing config\.json"):
            LocalVLM(path)


def test_bad_settings_give_config_errors(checkpoints: dict[str, Path]) -> None:
    path = checkpoints["llava"]
    with pytest.raises(ConfigError, match="quantize"):
        LocalVLM(path, quantize="3bit")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_batch_size"):
        LocalVLM(path, max_batch_size=0)
    with pytest.raises(ConfigError, match="dtype"):
        LocalVLM(path, dtype="int3")


def test_missing_bitsandbytes_names_the_install_command(
    checkpoints: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a),
    )
    with pytest.raises(DependencyNotInstalled, match="pip install bitsandbytes"):
        LocalVLM(checkpoints["llava"], quantize="4bit")


def test_4bit_quantization(checkpoints: dict[str, Path]) -> None:
    pytest.importorskip("bitsandbytes")
    vlm = LocalVLM(checkpoints["llava"], quantize="4bit")
    kinds = {type(m).__name__ for name, m in vlm.model.named_modules() if "language_model" in name}
    assert "Linear4bit" in kinds
    request = make_request(max_tokens=3)
    check_usage(asyncio.run(vlm.generate(request)), request)


# --- the demo checkpoint ---


def test_demo_checkpoint_is_built_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATARI_VLM_CACHE", str(tmp_path))
    path = tiny.demo_checkpoint()
    assert path.parent == tmp_path and tiny.DEMO_VERSION in path.name
    assert json.loads((path / tiny.DEMO_MARKER).read_text())["family"] == tiny.DEMO_FAMILY

    def no_rebuild(*args: Any, **kwargs: Any) -> Path:
        raise AssertionError("demo_checkpoint rebuilt a cached checkpoint")

    monkeypatch.setattr(tiny, "build_tiny_checkpoint", no_rebuild)
    assert tiny.demo_checkpoint() == path
    assert tiny.demo_checkpoint(cache_dir=tmp_path) == path


def test_cogvlm_checkpoints_are_refused_before_their_code_runs(tmp_path: Path) -> None:
    checkpoint = tmp_path / "cogvlm2-llama3-chat-19B"
    checkpoint.mkdir()
    config = {
        "architectures": ["CogVLMForCausalLM"],
        "auto_map": {"AutoModelForCausalLM": "modeling_cogvlm.CogVLMForCausalLM"},
    }
    (checkpoint / "config.json").write_text(json.dumps(config))
    (checkpoint / "modeling_cogvlm.py").write_text("raise SystemExit('remote code must not run')\n")
    with pytest.raises(ConfigError, match="lmdeploy serve api_server") as refused:
        LocalVLM(checkpoint, trust_remote_code=True)
    assert "--base-url" in str(refused.value) and "4.41-4.43" in str(refused.value)


def test_history_screens_stay_images_beside_the_video_llava_frame_stack(vlms: dict[str, LocalVLM]) -> None:
    from atari_vlm.env import AtariVLMEnv
    from atari_vlm.spec import RunSpec
    from atari_vlm.workers import vlm_agent

    spec = RunSpec.build(game="Pong", frame_stack=3, frame_layout="sequence", history_images=1)
    env = AtariVLMEnv(spec.env, spec.observation)
    vlm = vlms["video_llava"]
    agent = vlm_agent(spec, env.action_names, vlm)
    obs, _ = env.reset(seed=0)
    asyncio.run(agent.act(obs))
    obs, *_ = env.step(0)
    prompt = vlm.render(agent.build_request(obs).messages)
    env.close()
    assert prompt.count("<image>") == 1 and prompt.count("<video>") == 1  # one history screen, one clip


# --- scored and constrained choices ---

PONG = ("NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE")
# "UP" is a token prefix of "UP UP": only the end token tells the complete answers apart.
NESTED = ("NOOP", "FIRE", "UP", "UP UP", "UPRIGHT")
# Long enough that the text before the image is cached as a prefix (MIN_CACHED_PREFIX tokens).
LONG_SYSTEM = "You are playing Pong. " + "Move your paddle to meet the ball and score points. " * 3


def reference_log_likelihoods(vlm: LocalVLM, request: Request, answers: list[str]) -> np.ndarray:
    """log P(answer, end | prompt) of each candidate computed the plain way: one uncached, unpadded
    forward over prompt + answer for each answer, as fine-tuning lays out an example."""
    import torch

    prompt = vlm.render(request.messages)
    pil = [to_pil_image(p.pixels) for m in request.messages for p in m.images]
    kwargs: dict[str, Any] = {"text": [prompt], "return_tensors": "pt"}
    kwargs["add_special_tokens"] = not prompt.startswith(vlm.tokenizer.bos_token)
    if pil:
        kwargs["videos" if vlm.frames_as_video and len(pil) > 1 else "images"] = [pil]
    inputs = dict(vlm.processor(**kwargs))
    prompt_len = inputs["input_ids"].shape[1]
    ends = sorted(vlm._eos_ids | {vlm.tokenizer.eos_token_id})
    totals = []
    for answer in answers:
        ids = vlm.tokenizer(answer, add_special_tokens=False)["input_ids"]
        full = dict(inputs)
        full["input_ids"] = torch.cat([inputs["input_ids"], torch.tensor([ids])], 1)
        full["attention_mask"] = torch.ones_like(full["input_ids"])
        if "mm_token_type_ids" in inputs:
            zeros = torch.zeros((1, len(ids)), dtype=torch.long)
            full["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], zeros], 1)
        with torch.inference_mode():
            logp = vlm.model(**full).logits[0].float().log_softmax(-1)
        tokens = sum(logp[prompt_len - 1 + j, t].item() for j, t in enumerate(ids))
        totals.append(tokens + torch.logsumexp(logp[-1, ends], 0).item())
    return np.array(totals)


def reference_probs(vlm: LocalVLM, request: Request, answers: list[str]) -> np.ndarray:
    """The candidates' probabilities from :func:`reference_log_likelihoods`."""
    values = reference_log_likelihoods(vlm, request, answers)
    return np.exp(values - values.max()) / np.exp(values - values.max()).sum()


def to_pil_image(pixels: np.ndarray) -> Any:
    from atari_vlm.imaging import to_pil, to_rgb

    return to_pil(to_rgb(pixels))


def record_forwards(monkeypatch: pytest.MonkeyPatch, vlm: LocalVLM) -> list[tuple[int, int]]:
    """Wrap the model's forward: the list gets each call's (rows, tokens)."""
    calls: list[tuple[int, int]] = []
    real = vlm.model.forward

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(tuple(kwargs["input_ids"].shape))
        monkeypatch.setattr(vlm, "_last_inputs", kwargs["input_ids"], raising=False)
        return real(*args, **kwargs)

    monkeypatch.setattr(vlm.model, "forward", wrapper)
    return calls


def record_generates(monkeypatch: pytest.MonkeyPatch, vlm: LocalVLM) -> list[dict[str, Any]]:
    """Wrap ``model.generate``: the list gets each call's batch size and decoding settings."""
    calls: list[dict[str, Any]] = []
    real = vlm.model.generate

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(
            {
                "rows": int(kwargs["input_ids"].shape[0]),
                "do_sample": kwargs.get("do_sample"),
                "temperature": kwargs.get("temperature"),
                "max_new_tokens": kwargs.get("max_new_tokens"),
                "stops": kwargs.get("stopping_criteria") is not None,
            }
        )
        return real(*args, **kwargs)

    monkeypatch.setattr(vlm.model, "generate", wrapper)
    return calls


def gather(vlm: LocalVLM, requests: list[Request]) -> list[Completion]:
    async def run() -> list[Completion]:
        return list(await asyncio.gather(*(vlm.generate(r) for r in requests)))

    return asyncio.run(run())


def check_scores(vlm: LocalVLM, monkeypatch: pytest.MonkeyPatch, *, prefix_cache: bool) -> None:
    """Batched (padded), over a shared KV cache, with or without the cached system prompt: the
    same probabilities as scoring every answer on its own, end token included."""
    monkeypatch.setattr(vlm, "prefix_cache", prefix_cache)
    monkeypatch.setattr(vlm, "_prefixes", {})
    generates = count_generate(monkeypatch, vlm)
    requests = [
        make_request(seed, images, system=LONG_SYSTEM, decode="score", choices=NESTED)
        for seed, images in ((0, 1), (3, 1), (1, 2))  # two frames: Video-LLaVA's one video
    ]
    completions = gather(vlm, requests)
    assert generates == []  # no generation at all
    assert len(vlm._prefixes) == (1 if prefix_cache else 0)
    for completion, request in zip(completions, requests, strict=True):
        expected = reference_probs(vlm, request, [f"ACTION: {name}" for name in NESTED])
        probs = np.array([completion.choice_probs[name] for name in NESTED])
        assert list(completion.choice_probs) == list(NESTED)
        np.testing.assert_allclose(probs, expected, atol=1e-5)
        assert probs.sum() == pytest.approx(1.0)
        assert completion.choice == NESTED[int(np.argmax(expected))]
        assert completion.obtained == "scored" and completion.finish_reason == "stop"
        assert completion.text == f"ACTION: {completion.choice}"
        assert parse_action(completion.text, list(NESTED)).index == NESTED.index(completion.choice)


def test_scores_are_the_models_probabilities_of_the_complete_answers(
    vlm: LocalVLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    check_scores(vlm, monkeypatch, prefix_cache=True)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])  # 1-D positions, and Qwen's multimodal rope
def test_scores_without_the_prefix_cache(vlm: LocalVLM, monkeypatch: pytest.MonkeyPatch) -> None:
    check_scores(vlm, monkeypatch, prefix_cache=False)


def test_a_scored_answer_costs_what_its_tokens_say(vlms: dict[str, LocalVLM]) -> None:
    vlm = vlms["qwen2_vl"]
    free, scored = gather(vlm, [make_request(2), make_request(2, decode="score", choices=PONG)])
    assert scored.usage.input_tokens == free.usage.input_tokens
    assert scored.usage.image_tokens == free.usage.image_tokens == 12
    answer = vlm.tokenizer(f"ACTION: {scored.choice}", add_special_tokens=False)["input_ids"]
    assert scored.usage.output_tokens == len(answer) + 1  # and the end token


def test_one_forward_scores_every_candidate_and_the_prefix_is_computed_once(
    vlms: dict[str, LocalVLM], monkeypatch: pytest.MonkeyPatch
) -> None:
    vlm = vlms["llava"]
    monkeypatch.setattr(vlm, "_prefixes", {})
    forwards = record_forwards(monkeypatch, vlm)
    batch = [make_request(s, system=LONG_SYSTEM, decode="score", choices=PONG) for s in range(3)]
    gather(vlm, batch)
    first = list(forwards)
    prefix = first[0]
    assert prefix[0] == 1 and prefix[1] >= 16  # the shared system prompt, once
    # Then one forward for the three prompts (after the prefix) with every candidate's suffix after
    # them: the tiny tokenizer spells each name as one token after the shared "ACTION:", so each
    # row ends in len(PONG) candidate tokens.
    assert len(first) == 2 and first[1][0] == 3
    names = vlm.tokenizer([f" {name}" for name in PONG], add_special_tokens=False)["input_ids"]
    assert all(len(ids) == 1 for ids in names)
    assert vlm._last_inputs[:, -len(PONG) :].tolist() == [[ids[0] for ids in names]] * 3
    forwards.clear()
    gather(vlm, batch)
    assert [rows for rows, _ in forwards] == [3]  # the prefix came from its cache


# Names the tiny tokenizer splits into several tokens, beside single-token ones: candidates of
# different lengths side by side in one row.
MIXED = ("NOOP", "UPRIGHT", "FIRE FIRE FIRE", "RIGHT LEFT", "UP")


@pytest.mark.parametrize("one_pass", [True, False], ids=["one pass", "two passes"])
@pytest.mark.parametrize("prefix_cache", [True, False], ids=["prefix cached", "no prefix cache"])
@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])  # 1-D positions, and Qwen's multimodal rope
def test_scored_log_probabilities_are_those_of_a_full_forward_per_candidate(
    vlm: LocalVLM, monkeypatch: pytest.MonkeyPatch, one_pass: bool, prefix_cache: bool
) -> None:
    """Every candidate's log-probability, from the batched scoring (padded prompts of different
    lengths, choices that differ per request, suffixes of 1-4 tokens side by side, with or without
    the cached system prompt, computed or reused; in one forward or over a second pass on the KV
    cache), equals the plain full forward over prompt + that answer alone, within 1e-4."""
    monkeypatch.setattr(vlm, "prefix_cache", prefix_cache)
    monkeypatch.setattr(vlm, "_prefixes", {})
    monkeypatch.setattr(vlm, "_one_pass_fits", lambda length: one_pass)
    lengths = {len(vlm.tokenizer(f" {n}", add_special_tokens=False)["input_ids"]) for n in MIXED}
    assert max(lengths) >= 3 and min(lengths) == 1
    requests = [
        make_request(0, system=LONG_SYSTEM, decode="score", choices=MIXED),
        make_request(4, system=LONG_SYSTEM, decode="score", choices=PONG),
        make_request(2, system=LONG_SYSTEM, decode="score", choices=NESTED),
    ]
    first = gather(vlm, requests)
    again = gather(vlm, requests)  # the system prompt's KV now from the cache, unchanged by its use
    for completion, request in zip([*first, *again], [*requests, *requests], strict=True):
        choices = request.choices
        expected = reference_log_likelihoods(vlm, request, [f"ACTION: {name}" for name in choices])
        expected -= np.logaddexp.reduce(expected)
        got = np.log([completion.choice_probs[name] for name in choices])
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
        assert completion.choice == choices[int(np.argmax(expected))]


def test_one_pass_scoring_under_eager_attention(
    vlms: dict[str, LocalVLM], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eager attention adds the mask to the scores (sdpa takes it as booleans): the same values."""
    vlm = vlms["qwen2_vl"]
    vlm.model.set_attn_implementation("eager")
    try:
        assert vlm.model.config.get_text_config(decoder=True)._attn_implementation == "eager"
        requests = [make_request(s, system=LONG_SYSTEM, decode="score", choices=MIXED) for s in (0, 3)]
        for completion, request in zip(gather(vlm, requests), requests, strict=True):
            expected = reference_log_likelihoods(vlm, request, [f"ACTION: {name}" for name in MIXED])
            got = np.log([completion.choice_probs[name] for name in MIXED])
            np.testing.assert_allclose(got, expected - np.logaddexp.reduce(expected), atol=1e-4, rtol=0)
    finally:
        vlm.model.set_attn_implementation("sdpa")


def test_json_answers_are_scored_as_json(vlms: dict[str, LocalVLM]) -> None:
    vlm = vlms["idefics3"]
    (completion,) = gather(vlm, [make_request(1, decode="score", choices=PONG, json_mode=True)])
    assert json.loads(completion.text) == {"action": completion.choice}
    expected = reference_probs(vlm, make_request(1), [JSON_ANSWER.answer(name) for name in PONG])
    np.testing.assert_allclose([completion.choice_probs[n] for n in PONG], expected, atol=1e-5)


def test_constrained_reasoning_is_capped_then_the_choice_scored_after_it(
    vlms: dict[str, LocalVLM], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random weights never write the ACTION: marker, so the reasoning runs to max_tokens; the
    choice is then scored after it, on a line of its own."""
    vlm = vlms["llava"]
    generates = record_generates(monkeypatch, vlm)
    request = make_request(0, max_tokens=5, decode="constrained", choices=PONG, reasoning=True)
    (completion,) = gather(vlm, [request])
    assert generates == [
        {"rows": 1, "do_sample": False, "temperature": None, "max_new_tokens": 5, "stops": True}
    ]
    assert completion.obtained == "constrained" and completion.choice in PONG
    lead = completion.text.removesuffix(f"\nACTION: {completion.choice}")
    assert lead != completion.text and "ACTION" not in lead
    (free,) = gather(vlm, [make_request(0, max_tokens=5)])
    assert lead == free.text  # the reasoning is what greedy generation writes in 5 tokens
    assert completion.finish_reason == "length"  # the reasoning was cut, not the answer
    expected = reference_probs(vlm, request, [LINE_ANSWER.answer(name, lead) for name in PONG])
    np.testing.assert_allclose([completion.choice_probs[n] for n in PONG], expected, atol=1e-5)


@pytest.mark.parametrize(
    ("json_mode", "written", "expected_lead"),
    [
        (False, "The ball is above.\nACTION: RIGHT is best", "The ball is above.\n"),
        (True, '{"reasoning": "the ball is above", "action": "LEFT"}', '{"reasoning": "the ball is above", '),
    ],
)
def test_reasoning_stops_at_the_marker_and_the_choice_follows_it(
    vlms: dict[str, LocalVLM],
    monkeypatch: pytest.MonkeyPatch,
    json_mode: bool,
    written: str,
    expected_lead: str,
) -> None:
    """What the model wrote after the marker is dropped; the scored choice takes its place."""
    import torch

    vlm = vlms["llava"]
    tail = vlm.tokenizer(written, add_special_tokens=False)["input_ids"]

    def writes(**kwargs: Any) -> Any:  # the model's reasoning, fixed
        ids = kwargs["input_ids"]
        return torch.cat([ids, torch.tensor([tail] * ids.shape[0])], 1)

    monkeypatch.setattr(vlm.model, "generate", writes)
    request = make_request(
        1, max_tokens=64, decode="score", choices=PONG, reasoning=True, json_mode=json_mode
    )
    (completion,) = gather(vlm, [request])
    shape = JSON_ANSWER if json_mode else LINE_ANSWER
    assert completion.text == shape.answer(completion.choice, expected_lead, at_marker=True)
    assert completion.obtained == "scored" and completion.finish_reason == "stop"
    assert parse_action(completion.text, list(PONG)).index == PONG.index(completion.choice)
    if json_mode:
        assert json.loads(completion.text)["action"] == completion.choice
    answers = [shape.answer(name, expected_lead, at_marker=True) for name in PONG]
    np.testing.assert_allclose(
        [completion.choice_probs[n] for n in PONG], reference_probs(vlm, request, answers), atol=1e-5
    )


def test_the_marker_stops_a_row_of_generate(vlms: dict[str, LocalVLM]) -> None:
    import torch

    from atari_vlm.models.local import _stop_at_marker

    tokenizer = vlms["llava"].tokenizer
    prompt = tokenizer("USER: play ASSISTANT:", add_special_tokens=False)["input_ids"]

    def rows(*texts: str) -> Any:
        tails = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        width = max(map(len, tails))
        padded = [[tokenizer.pad_token_id] * (width - len(t)) + t for t in tails]
        return torch.tensor([prompt + t for t in padded])

    stop = _stop_at_marker(tokenizer, LINE_ANSWER.marker, len(prompt))[0]
    texts = ("The ball is up.\nACTION:", "I think the action", "**Action:**", "reaction: none")
    assert stop(rows(*texts), None).tolist() == [True, False, True, False]
    json_stop = _stop_at_marker(tokenizer, JSON_ANSWER.marker, len(prompt))[0]
    assert json_stop(rows('{"reasoning": "up", "action":', '{"reasoning": "action"'), None).tolist() == [
        True,
        False,
    ]


def test_sampling_is_seeded_and_greedy_at_a_vanishing_temperature(checkpoints: dict[str, Path]) -> None:
    def play(seed: int, temperature: float) -> list[str | None]:
        vlm = LocalVLM(checkpoints["llava"], seed=seed)
        requests = [
            make_request(s % 3, decode="score", choices=PONG, temperature=temperature) for s in range(12)
        ]
        requests += [make_request(0, max_tokens=6, temperature=temperature)] * 2  # free sampling too
        out = [c.choice or c.text for c in gather(vlm, requests)]
        asyncio.run(vlm.aclose())
        return out

    first, again, other = play(3, 1.0), play(3, 1.0), play(4, 1.0)
    assert first == again and first != other
    assert len(set(first[:12])) > 1  # random weights: close to uniform over the six
    assert play(5, 1e-4)[:12] == play(5, 0.0)[:12]  # a vanishing temperature samples the greedy choice


def test_choices_are_checked(vlms: dict[str, LocalVLM]) -> None:
    vlm = vlms["llava"]
    for choices, message in (
        (("UP", "UP"), "distinct"),
        (("UP", ""), "1-100 characters"),
        (("UP", "X" * 101), "1-100 characters"),
        (tuple(f"A{i}" for i in range(257)), "at most 256"),
    ):
        with pytest.raises(ModelError, match=message):
            asyncio.run(vlm.generate(make_request(decode="score", choices=choices)))


def test_the_demo_models_scored_decisions_are_always_legal(vlms: dict[str, LocalVLM]) -> None:
    """The agent's own requests on a real game: every answer is a legal action, and parses back."""
    from atari_vlm.env import AtariVLMEnv
    from atari_vlm.spec import RunSpec
    from atari_vlm.workers import vlm_agent

    vlm = vlms[tiny.DEMO_FAMILY]
    spec = RunSpec.build(game="Pong")
    env = AtariVLMEnv(spec.env, spec.observation)
    agent = vlm_agent(spec, env.action_names, vlm)
    obs, _ = env.reset(seed=0)
    names = env.action_names
    for _ in range(8):
        request = agent.build_request(obs)  # --decode auto: a local model scores
        assert request.decode == "score" and request.choices == tuple(names)
        completion = asyncio.run(vlm.generate(request))
        assert completion.choice in names
        decision = agent.decide(completion)
        assert decision.parsed and decision.action_name == completion.choice
        obs, *_ = env.step(decision.action)
    env.close()


# --- the batcher: which requests share a batch, and how long it waits for them ---


def test_greedy_sampled_and_scored_requests_never_share_a_batch(
    vlms: dict[str, LocalVLM], monkeypatch: pytest.MonkeyPatch
) -> None:
    vlm = vlms["llava"]
    generates = record_generates(monkeypatch, vlm)
    requests = [
        make_request(0),
        make_request(1, temperature=1.0),
        make_request(2, decode="score", choices=PONG),
        make_request(3),
        make_request(4, temperature=1.0),
        make_request(5, decode="score", choices=PONG, temperature=1.0),
        make_request(6, decode="constrained", choices=PONG),
    ]
    completions = gather(vlm, requests)
    settings = sorted((c["rows"], c["do_sample"], c["temperature"]) for c in generates)
    assert settings == [(2, False, None), (2, True, 1.0)]  # one generate each; the scored ones: none
    obtained = ["free", "free", "scored", "free", "free", "scored", "constrained"]
    assert [c.obtained for c in completions] == obtained


def test_the_batcher_waits_for_a_full_batch(
    vlms: dict[str, LocalVLM], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The window's clock never runs out here, so only a full batch starts the model."""
    vlm = vlms["llava"]
    monkeypatch.setattr(vlm, "max_batch_size", 3)
    monkeypatch.setattr(vlm, "max_wait_s", 60.0)
    windows: list[float] = []

    async def clock_that_never_runs_out(seconds: float) -> None:
        windows.append(seconds)
        await asyncio.Event().wait()

    monkeypatch.setattr(vlm, "_sleep", clock_that_never_runs_out)
    calls = count_generate(monkeypatch, vlm)

    async def run() -> None:
        first = asyncio.ensure_future(vlm.generate(make_request(0)))
        for _ in range(20):  # the batcher takes the first request and opens its window
            await asyncio.sleep(0)
        later = [asyncio.ensure_future(vlm.generate(make_request(s))) for s in (1, 2)]
        await asyncio.gather(first, *later)

    asyncio.run(run())
    assert calls == [3]
    assert windows == [60.0]


def test_the_batch_window_closes_at_its_deadline(
    vlms: dict[str, LocalVLM], monkeypatch: pytest.MonkeyPatch
) -> None:
    vlm = vlms["llava"]
    monkeypatch.setattr(vlm, "max_batch_size", 3)
    deadline_reached = asyncio.Event()

    async def clock(seconds: float) -> None:
        await deadline_reached.wait()

    monkeypatch.setattr(vlm, "_sleep", clock)
    calls = count_generate(monkeypatch, vlm)

    async def run() -> None:
        waiting = [asyncio.ensure_future(vlm.generate(make_request(s))) for s in (0, 1)]
        for _ in range(20):
            await asyncio.sleep(0)
        assert calls == []  # two of three: still waiting
        deadline_reached.set()
        await asyncio.wait_for(asyncio.gather(*waiting), 60)

    asyncio.run(run())
    assert calls == [2]
