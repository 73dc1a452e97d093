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

pytest.importorskip("torch")
pytest.importorskip("transformers")

from atari_vlm.models import tiny
from atari_vlm.models.local import FramesVideoProcessor, LocalVLM

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


def make_request(seed: int = 0, images: int = 1, max_tokens: int = 6, temperature: float = 0.0) -> Request:
    """System + user turn; the text length varies with ``seed`` so that batches need padding."""
    parts = [ImagePart(frame(seed * 10 + i)) for i in range(images)]
    text = "Legal actions: NOOP, FIRE, UP, DOWN. " + "Think. " * seed + "Reply ACTION: <action>"
    return Request(
        (
            Message.text("system", "You are playing Pong."),
            Message("user", (*parts, TextPart(text))),
        ),
        max_tokens=max_tokens,
        temperature=temperature,
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
