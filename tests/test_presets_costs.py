"""Presets (data, validation, availability, recommendation), the registry's use of them, and costs."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from atari_vlm.errors import ConfigError, ModelError
from atari_vlm.models import capabilities as capabilities_module
from atari_vlm.models import presets as presets_module
from atari_vlm.models.base import Completion, ImagePart, Message, Request, TextPart, Usage
from atari_vlm.models.capabilities import capability_for, load_capabilities
from atari_vlm.models.costs import (
    BudgetedVLM,
    BudgetExceeded,
    cost_breakdown,
    cost_usd,
    estimate_request_usage,
    estimate_run_cost,
    with_cost,
)
from atari_vlm.models.endpoints import probe_server, safe_url, validate_base_url
from atari_vlm.models.presets import (
    FREE,
    Prices,
    availabilities,
    availability,
    get_preset,
    list_presets,
    load_presets,
    local_snapshot,
    recommend,
)
from atari_vlm.models.registry import check_base_url, load_model
from atari_vlm.models.table import DOCS_BEGIN, DOCS_END, presets_markdown, render_models_table
from atari_vlm.spec import ModelSpec
from atari_vlm.testing import serve_in_thread

KEY_VARS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY")
URL_VARS = ("OPENAI_BASE_URL", "ANTHROPIC_BASE_URL", "GOOGLE_GEMINI_BASE_URL")
REQUIRED = {
    "gpt-4o": ("openai", "gpt-4o"),
    "gpt-4o-mini": ("openai", "gpt-4o-mini"),
    "gpt-4v": ("openai", "gpt-4-turbo"),
    "claude-3.5-sonnet": ("anthropic", None),
    "claude-sonnet-4": ("anthropic", None),
    "gemini-1.5-pro": ("gemini", "gemini-1.5-pro"),
    "gemini-1.5-flash": ("gemini", "gemini-1.5-flash"),
    "gemini-2.5-flash": ("gemini", "gemini-2.5-flash"),
    "qwen-vl": ("local", "Qwen/Qwen2-VL-7B-Instruct"),
    "qwen2.5-vl-3b": ("local", "Qwen/Qwen2.5-VL-3B-Instruct"),
    "qwen2.5-vl-7b": ("local", "Qwen/Qwen2.5-VL-7B-Instruct"),
    "llava-1.6": ("local", "llava-hf/llava-v1.6-mistral-7b-hf"),
    "idefics2": ("local", "HuggingFaceM4/idefics2-8b"),
    "idefics3": ("local", None),
    "smolvlm": ("local", "HuggingFaceTB/SmolVLM-Instruct"),
    "video-llava": ("local", "LanguageBind/Video-LLaVA-7B-hf"),
    "cogvlm2": ("local", "THUDM/cogvlm2-llama3-chat-19B"),
}


def needs_torch_installed() -> None:
    """Skip unless torch is installed (found, not imported: importing it costs seconds)."""
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed")


@pytest.fixture
def no_keys(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in KEY_VARS + URL_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache of this test only."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def cache_model(cache: Path, repo_id: str, *, weights: bool = True) -> Path:
    """Lay ``repo_id`` out in ``cache`` the way huggingface_hub does (refs/main -> snapshots/<sha>)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    (snapshot / "config.json").write_text("{}")
    if weights:
        (snapshot / "model.safetensors").write_bytes(b"")
    return snapshot


# -- the presets file --------------------------------------------------------------------------------


def test_the_shipped_presets_are_complete_and_priced() -> None:
    presets = {p.name: p for p in list_presets()}
    for name, (provider, model_id) in REQUIRED.items():
        assert presets[name].provider == provider, name
        if model_id:
            assert presets[name].model_id == model_id, name
    for preset in presets.values():
        if preset.is_api:
            assert preset.prices.input_per_mtok > 0 and preset.prices.output_per_mtok > 0
            assert re.match(r"^\d{4}-\d{2}", preset.prices.date or "") and preset.prices.source
            assert preset.hardware == "API"
        else:
            assert preset.prices == FREE and "GB" in preset.hardware
        assert preset.good_at
    assert get_preset("cogvlm2").trust_remote_code
    assert not any(p.trust_remote_code for p in presets.values() if p.name != "cogvlm2")


def test_names_and_aliases_any_case() -> None:
    assert get_preset("GPT-4o").name == "gpt-4o"
    assert get_preset("gpt-4-turbo").name == "gpt-4v"
    assert get_preset(" LLaVA-NeXT ").name == "llava-1.6"


def test_unknown_preset_lists_the_closest_and_all() -> None:
    with pytest.raises(ConfigError) as info:
        get_preset("gpt4o")
    message = str(info.value)
    assert "Did you mean 'gpt-4o'" in message
    assert all(p.name in message for p in list_presets())


def write(tmp_path: Path, presets: Any, **top: Any) -> Path:
    path = tmp_path / "presets.json"
    path.write_text(json.dumps({"format": 1, "presets": presets, **top}))
    return path


API_ENTRY = {
    "name": "m",
    "provider": "openai",
    "model_id": "m-1",
    "price": {"input_per_mtok": 1, "output_per_mtok": 2, "date": "2026-01-02", "source": "https://x.test/p"},
    "hardware": "API",
    "good_at": "tests",
}
LOCAL_ENTRY = {"name": "l", "provider": "local", "model_id": "org/l", "hardware": "1 GB", "good_at": "tests"}


def test_a_valid_file_loads(tmp_path: Path) -> None:
    api, local = load_presets(write(tmp_path, [API_ENTRY, LOCAL_ENTRY]))
    assert api.prices == Prices(1.0, 2.0, "2026-01-02", "https://x.test/p")
    assert local.prices == FREE and not local.is_api


@pytest.mark.parametrize(
    "entries,expect",
    [
        ([{**API_ENTRY, "provider": "azure"}], "provider 'azure' is not one of"),
        ([{k: v for k, v in API_ENTRY.items() if k != "price"}], "needs 'price'"),
        ([{**API_ENTRY, "price": {**API_ENTRY["price"], "date": "last week"}}], "price.date"),
        ([{**API_ENTRY, "price": {**API_ENTRY["price"], "source": "x.test"}}], "price.source"),
        ([{**API_ENTRY, "price": {**API_ENTRY["price"], "input_per_mtok": -1}}], "price.input_per_mtok"),
        ([{**API_ENTRY, "price": {**API_ENTRY["price"], "output_per_mtok": "2"}}], "price.output_per_mtok"),
        ([{**API_ENTRY, "hardware": ""}], "needs a non-empty string 'hardware'"),
        ([{**API_ENTRY, "speed": "fast"}], "unknown fields ['speed']"),
        ([{**LOCAL_ENTRY, "price": API_ENTRY["price"]}], "a local preset has no 'price'"),
        ([API_ENTRY, {**LOCAL_ENTRY, "aliases": ["M"]}], "name 'M' is used twice"),
        ([{**LOCAL_ENTRY, "trust_remote_code": "yes"}], "'trust_remote_code' must be true or false"),
        (["gpt-4o"], "presets[0] must be an object"),
    ],
)
def test_invalid_entries_name_file_entry_and_field(tmp_path: Path, entries: list[Any], expect: str) -> None:
    path = write(tmp_path, entries)
    with pytest.raises(ConfigError) as info:
        load_presets(path)
    assert expect in str(info.value) and str(path) in str(info.value)


def test_invalid_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_presets(bad)
    with pytest.raises(ConfigError, match='"format": 1'):
        load_presets(write(tmp_path, [API_ENTRY], format=2))
    with pytest.raises(ConfigError, match="cannot read"):
        load_presets(tmp_path / "missing.json")


# -- availability and recommendation -----------------------------------------------------------------


def test_api_availability_follows_the_key_variables(no_keys: pytest.MonkeyPatch) -> None:
    gpt, gemini = get_preset("gpt-4o"), get_preset("gemini-3.5-flash-lite")
    assert availability(gpt) == (False, "set OPENAI_API_KEY")
    assert availability(gemini) == (False, "set GEMINI_API_KEY or GOOGLE_API_KEY")
    assert availability(gpt, api_key="sk-x") == (True, "key from --api-key")
    no_keys.setenv("OPENAI_API_KEY", "sk-x")
    no_keys.setenv("GOOGLE_API_KEY", "g-x")
    assert availability(gpt) == (True, "OPENAI_API_KEY is set")
    assert availability(gemini) == (True, "GOOGLE_API_KEY is set")
    assert availability(get_preset("gemini-2.5-flash")) == (False, "retired by gemini on 2026-12-01")


def test_a_missing_sdk_names_the_pip_command(no_keys: pytest.MonkeyPatch) -> None:
    no_keys.setenv("ANTHROPIC_API_KEY", "k")
    no_keys.setattr(presets_module, "_installed", lambda module: module != "anthropic")
    assert availability(get_preset("claude-sonnet-5")) == (False, 'pip install "atari-vlm[anthropic]"')


def test_local_availability_looks_only_at_the_cache(hf_cache: Path, tmp_path: Path) -> None:
    preset = get_preset("qwen2.5-vl-3b")
    usable, reason = availability(preset)
    assert not usable and "hf download Qwen/Qwen2.5-VL-3B-Instruct" in reason
    cache_model(hf_cache, "HuggingFaceTB/SmolVLM-Instruct", weights=False)
    assert local_snapshot("HuggingFaceTB/SmolVLM-Instruct") is None  # config without weights
    snapshot = cache_model(hf_cache, preset.model_id)
    assert local_snapshot(preset.model_id) == snapshot
    needs_torch_installed()
    assert availability(preset) == (True, "weights cached")
    cog = get_preset("cogvlm2")
    cache_model(hf_cache, cog.model_id)
    assert availability(cog) == (True, "weights cached (with --trust-remote-code)")
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    assert local_snapshot(str(checkpoint)) is None
    (checkpoint / "config.json").write_text("{}")
    assert local_snapshot(str(checkpoint)) == checkpoint
    assert local_snapshot("not a valid/repo/id!") is None


def test_recommendations(no_keys: pytest.MonkeyPatch, hf_cache: Path) -> None:
    nothing = recommend(availabilities(), gpu=False)
    assert "--model demo" in nothing and "OPENAI_API_KEY" in nothing
    assert "hf download Qwen/Qwen2.5-VL-3B-Instruct" in recommend(availabilities(), gpu=True)
    no_keys.setenv("GEMINI_API_KEY", "g")
    no_keys.setenv("ANTHROPIC_API_KEY", "a")
    cheapest = recommend(availabilities(), gpu=False)
    assert "--model gemini-3.5-flash-lite" in cheapest  # the cheapest non-legacy usable preset
    assert "gemini-1.5-flash" not in cheapest and "gemini-2.0-flash" not in cheapest  # legacy: never
    needs_torch_installed()
    cache_model(hf_cache, "HuggingFaceTB/SmolVLM-Instruct")
    assert "--model smolvlm --device cuda" in recommend(availabilities(), gpu=True)


def test_models_table_renders_every_preset(no_keys: pytest.MonkeyPatch) -> None:
    console = Console(record=True, width=400)
    render_models_table(console, gpu=False)
    text = console.export_text()
    assert all(p.name in text for p in list_presets())
    assert "set OPENAI_API_KEY" in text and "Recommendation:" in text and "2.5" in text


def test_the_docs_table_is_generated_from_the_presets() -> None:
    docs = Path(__file__).resolve().parents[1] / "docs" / "providers.md"
    text = docs.read_text(encoding="utf-8")
    table = text.split(DOCS_BEGIN, 1)[1].split(DOCS_END, 1)[0].strip()
    assert table == presets_markdown(), (
        "docs/providers.md is stale: paste presets_markdown() between the markers"
    )


# -- the registry ------------------------------------------------------------------------------------


def test_api_presets_load_their_backend_with_prices(no_keys: pytest.MonkeyPatch) -> None:
    pytest.importorskip("openai")
    no_keys.setenv("OPENAI_API_KEY", "sk-test-1234")
    loaded = load_model("gpt-4o")
    assert loaded.provider == "openai" and loaded.vlm.model == "gpt-4o" and loaded.spec == "openai:gpt-4o"
    assert loaded.preset == "gpt-4o" and loaded.prices == get_preset("gpt-4o").prices
    assert load_model("openai:gpt-4o-mini").prices == get_preset("gpt-4o-mini").prices
    assert load_model("openai:some-new-model").prices is None
    served = load_model(ModelSpec(model="openai:qwen", base_url="http://127.0.0.1:8000/v1"))
    assert served.prices is None  # a custom server's price is unknown, not zero
    assert served.vlm.capability.pattern == "*" and served.vlm.capability.token_limit == "max_tokens"
    proxied = load_model(ModelSpec(model="gpt-4o", base_url="http://127.0.0.1:8000/v1"))  # a proxy of gpt-4o
    assert proxied.prices == get_preset("gpt-4o").prices and proxied.base_url == "http://127.0.0.1:8000/v1"
    assert proxied.vlm.capability.pattern == "gpt-4o"  # its model's rules, whatever the host


def test_anthropic_and_gemini_prefixes_and_preset_options(no_keys: pytest.MonkeyPatch) -> None:
    pytest.importorskip("anthropic")
    pytest.importorskip("google.genai")
    no_keys.setenv("ANTHROPIC_API_KEY", "sk-ant-1234")
    no_keys.setenv("GEMINI_API_KEY", "g-1234")
    claude = load_model("anthropic:claude-x")
    assert claude.provider == "anthropic" and claude.vlm.model == "claude-x" and claude.prices is None
    assert not claude.vlm.send_temperature
    assert load_model("claude-sonnet-4").vlm.send_temperature  # the capability table: it took temperature
    assert not load_model("claude-sonnet-5").vlm.send_temperature  # Sonnet 5 answers 400 to it
    legacy = load_model("claude-3.5-sonnet")
    assert legacy.warning and "retired by anthropic on 2025-10-22" in legacy.warning
    gemini = load_model("gemini-2.5-flash")
    assert gemini.spec == "gemini:gemini-2.5-flash" and gemini.vlm.reasoning_value == 0  # thinking_budget 0
    assert load_model("gemini:gemini-2.5-flash").prices == get_preset("gemini-2.5-flash").prices
    claude4 = "anthropic:claude-sonnet-4-20250514"
    assert load_model(claude4).prices == get_preset("claude-sonnet-4").prices
    assert load_model(ModelSpec(model=claude4, base_url="http://127.0.0.1:9")).prices is None  # a proxy
    for spec in ("anthropic:", "gemini:"):
        with pytest.raises(ConfigError, match="needs a model name"):
            load_model(spec)


def test_missing_keys_fail_before_any_request(no_keys: pytest.MonkeyPatch) -> None:
    pytest.importorskip("anthropic")
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY"):
        load_model("claude-sonnet-4")


def test_local_presets_need_cached_weights_and_opt_in(
    hf_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match=re.escape("hf download Qwen/Qwen2.5-VL-3B-Instruct")):
        load_model("qwen2.5-vl-3b")
    with pytest.raises(ConfigError, match="--trust-remote-code"):
        load_model("cogvlm2")

    built: list[dict[str, Any]] = []

    class FakeLocalVLM:
        def __init__(self, path: str, **kwargs: Any) -> None:
            built.append({"path": path, **kwargs})
            self.name = "fake"

    import atari_vlm.models.local as local_module

    monkeypatch.setattr(local_module, "LocalVLM", FakeLocalVLM)
    snapshot = cache_model(hf_cache, "Qwen/Qwen2.5-VL-3B-Instruct")
    loaded = load_model("qwen2.5-vl-3b")
    assert built[-1]["path"] == str(snapshot) and built[-1]["trust_remote_code"] is False
    assert loaded.spec == "qwen2.5-vl-3b" and loaded.provider == "local" and loaded.prices == FREE
    cog = cache_model(hf_cache, "THUDM/cogvlm2-llama3-chat-19B")
    load_model(ModelSpec(model="cogvlm2", trust_remote_code=True))
    assert built[-1]["path"] == str(cog) and built[-1]["trust_remote_code"] is True
    assert load_model("local:Qwen/Qwen2.5-VL-3B-Instruct").spec == "local:Qwen/Qwen2.5-VL-3B-Instruct"


def test_unknown_model_suggests_presets() -> None:
    with pytest.raises(ConfigError, match=re.escape("Did you mean 'qwen2.5-vl-3b'")):
        load_model("qwen2.5-vl-3")


# -- costs -------------------------------------------------------------------------------------------


def test_cost_arithmetic() -> None:
    prices = Prices(2.5, 10.0)
    assert cost_usd(Usage(1_000, 50), prices) == pytest.approx(0.0025 + 0.0005)
    assert cost_usd(Usage(1_000_000, 1_000_000), get_preset("gpt-4o")) == pytest.approx(12.5)
    assert cost_usd(Usage(10**6, 10**6, image_tokens=500), FREE) == 0.0
    assert estimate_run_cost(Usage(1_000, 50), 200, prices) == pytest.approx(0.6)
    with pytest.raises(ConfigError):
        estimate_run_cost(Usage(1, 1), -1, prices)


def test_request_estimate_is_generous() -> None:
    request = Request(
        (Message("user", (TextPart("x" * 400), ImagePart(np.zeros((210, 160, 3), np.uint8)))),),
        max_tokens=64,
    )
    usage = estimate_request_usage(request)
    assert usage.input_tokens == 100 + 258 and usage.output_tokens == 64 and usage.image_tokens == 258
    big = Request((Message("user", (ImagePart(np.zeros((1000, 1000), np.uint8)),)),), max_tokens=1)
    assert estimate_request_usage(big).input_tokens == 1334


class FakeVLM:
    """Answers at once with the next usage of a list (one call = one usage)."""

    def __init__(self, usages: list[Usage], delay_s: float = 0.0) -> None:
        self.name = "fake"
        self.usages = list(usages)
        self.calls = 0
        self.delay_s = delay_s
        self.closed = False

    async def generate(self, request: Request) -> Completion:
        usage = self.usages[min(self.calls, len(self.usages) - 1)]
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        return Completion("ACTION: UP", usage)

    async def aclose(self) -> None:
        self.closed = True


SMALL = Request((Message.text("user", "move?"),), max_tokens=10)
PER_MTOK = Prices(1_000.0, 0.0)  # $0.001 per input token: a call of 10 tokens costs $0.01


def play(vlm: BudgetedVLM, n: int) -> tuple[int, BudgetExceeded | None]:
    """Call ``generate`` until ``n`` calls or a BudgetExceeded; how many succeeded and the stop."""

    async def go() -> tuple[int, BudgetExceeded | None]:
        for i in range(n):
            try:
                await vlm.generate(SMALL)
            except BudgetExceeded as exc:
                return i, exc
        return n, None

    return asyncio.run(go())


def test_budget_stops_before_the_call_that_would_exceed() -> None:
    inner = FakeVLM([Usage(10, 0)])
    vlm = BudgetedVLM(inner, max_cost_usd=0.035, prices=PER_MTOK)
    done, stop = play(vlm, 10)
    assert done == 3 and inner.calls == 3 and stop is not None
    assert stop.spent_usd == pytest.approx(0.03) and stop.limit_usd == 0.035
    assert stop.next_call_usd == pytest.approx(0.01) and "--max-cost" in str(stop)
    assert isinstance(stop, RuntimeError) and not isinstance(stop, ModelError)
    assert vlm.spent_usd == pytest.approx(0.03) and vlm.calls == 3


def test_the_first_call_is_checked_against_an_estimate() -> None:
    inner = FakeVLM([Usage(10, 0)])
    # The estimate of SMALL (2 text tokens + 10 output tokens at $0 output) is $0.002.
    assert play(BudgetedVLM(inner, max_cost_usd=0.001, prices=PER_MTOK), 3)[0] == 0 and inner.calls == 0
    assert play(BudgetedVLM(FakeVLM([Usage(10, 0)]), max_cost_usd=0.002, prices=PER_MTOK), 3)[0] == 1


@settings(max_examples=60, deadline=None)
@given(
    costs=st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=30),
    limit=st.integers(min_value=0, max_value=400),
)
def test_overshoot_is_at_most_one_call(costs: list[int], limit: int) -> None:
    inner = FakeVLM([Usage(c, 0) for c in costs])
    vlm = BudgetedVLM(inner, max_cost_usd=limit / 1000, prices=PER_MTOK)
    done, stop = play(vlm, len(costs))
    spent = sum(costs[:done]) / 1000
    assert vlm.spent_usd == pytest.approx(spent)
    assert spent <= limit / 1000 + max(costs[:done], default=0) / 1000 + 1e-12
    if stop is not None:
        assert spent + stop.next_call_usd > limit / 1000 - 1e-12


def test_concurrent_calls_reserve_their_cost() -> None:
    inner = FakeVLM([Usage(10, 0)], delay_s=0.01)
    prices = Prices(1_000.0, 0.0)
    request = Request((Message.text("user", "x" * 40),), max_tokens=0)  # estimated at 10 tokens: $0.01
    vlm = BudgetedVLM(inner, max_cost_usd=0.025, prices=prices)

    async def go() -> list[Any]:
        return await asyncio.gather(*(vlm.generate(request) for _ in range(5)), return_exceptions=True)

    results = asyncio.run(go())
    assert sum(isinstance(r, Completion) for r in results) == 2 and inner.calls == 2
    assert sum(isinstance(r, BudgetExceeded) for r in results) == 3


def test_budget_needs_a_known_price_and_passes_through() -> None:
    with pytest.raises(ConfigError, match="no price is known"):
        BudgetedVLM(FakeVLM([Usage()]), max_cost_usd=1.0, prices=None)
    with pytest.raises(ConfigError, match="--max-cost"):
        BudgetedVLM(FakeVLM([Usage()]), max_cost_usd=-1.0, prices=FREE)
    unknown = BudgetedVLM(FakeVLM([Usage(5, 5)]), max_cost_usd=None, prices=None)
    assert play(unknown, 2) == (2, None) and unknown.spent_usd == 0.0 and unknown.calls == 2
    inner = FakeVLM([Usage(5, 5)])
    counting = BudgetedVLM(inner, max_cost_usd=None, prices=get_preset("gpt-4o"))
    assert play(counting, 4) == (4, None)
    assert counting.spent_usd == pytest.approx(4 * (5 * 2.5 + 5 * 10) / 1e6)
    assert counting.name == "fake" and counting.delay_s == 0.0  # the inner model's attributes
    asyncio.run(counting.aclose())
    assert inner.closed


def test_with_cost_fills_the_field_once_completion_has_it() -> None:
    completion = Completion("x", Usage(1, 1))
    priced = with_cost(completion, 0.5)
    if "cost_usd" in {f.name for f in dataclasses.fields(Completion)}:
        assert priced.cost_usd == 0.5  # type: ignore[attr-defined]
    else:
        assert priced is completion


# -- prices that are true now, the capability table, endpoints ---------------------------------------


# (input, output, cache read, cache write) per million tokens, as read 2026-12-03 (see presets.json)
PRICES_READ = {
    "gpt-4o": (2.5, 10.0, 1.25, None),
    "gpt-4o-mini": (0.15, 0.6, 0.075, None),
    "claude-sonnet-5": (3.0, 15.0, 0.3, 3.75),
    "claude-sonnet-4": (3.0, 15.0, 0.3, 3.75),
    "gemini-3.5-flash-lite": (0.3, 2.5, None, None),
}


def test_the_prices_are_the_ones_read_with_their_page_and_date() -> None:
    for name, (inp, out, read, write) in PRICES_READ.items():
        prices = get_preset(name).prices
        assert (prices.input_per_mtok, prices.output_per_mtok) == (inp, out), name
        assert (prices.cached_input_per_mtok, prices.cache_write_per_mtok) == (read, write), name
        assert prices.source and prices.source.startswith("https://") and prices.date, name
    assert get_preset("claude-sonnet-5").prices.date == "2026-12-03"
    assert "introductory" in (get_preset("claude-sonnet-5").prices.note or "")  # why not $3/$15


def test_every_api_preset_has_its_own_capability_entry_and_retired_ones_are_legacy() -> None:
    for preset in list_presets():
        if not preset.is_api:
            assert preset.capability is None
            continue
        capability = preset.capability
        assert capability is not None and capability.pattern != "*", preset.name  # not the defaults
        assert capability.lifecycle.status in ("active", "legacy", "deprecated", "retired", "unknown")
        if capability.lifecycle.retired:
            assert preset.legacy, f"{preset.name} is retired but not marked legacy"
    current = [p for p in list_presets() if p.is_api and not p.legacy]
    assert {p.provider for p in current} == {"openai", "anthropic", "gemini"}  # one usable per provider


@pytest.mark.parametrize(
    ("provider", "model", "pattern", "off"),
    [
        ("anthropic", "claude-sonnet-5", "claude-sonnet-5", {"type": "disabled"}),
        ("anthropic", "claude-sonnet-5-5", "*", None),  # not Sonnet 5's rules: unknown, so safe defaults
        ("openai", "gpt-5-mini-2025-08-07", "gpt-5-mini-*", "minimal"),
        ("openai", "gpt-5.1", "gpt-5.1", "none"),
        ("gemini", "gemini-3.5-flash-lite", "gemini-3.5-flash-lite", "minimal"),
        ("gemini", "gemini-2.5-flash", "gemini-2.5-flash", 0),
    ],
)
def test_capability_lookup_picks_the_most_specific_pattern(
    provider: str, model: str, pattern: str, off: object
) -> None:
    capability = capability_for(provider, model)
    assert capability.pattern == pattern and capability.reasoning_off == off


def test_a_server_of_ones_own_never_gets_openais_rules() -> None:
    assert capability_for("openai", "gpt-5-mini", official=False).pattern == "*"
    assert capability_for("openai", "gpt-5-mini", official=False).token_limit == "max_tokens"


def write_capabilities(tmp_path: Path, mutate: Any) -> Path:
    data = json.loads(capabilities_module.CAPABILITIES_PATH.read_text())
    mutate(data)
    path = tmp_path / "capabilities.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("mutate", "expect"),
    [
        (lambda d: d["models"][0]["reasoning"].update(control="telepathy"), "reasoning.control"),
        (lambda d: d["models"][0].update(sampling="hot"), "sampling must be one of"),
        (lambda d: d["models"][0].update(match=[]), "'match' must be a non-empty list"),
        (lambda d: d["defaults"].pop("gemini"), "'defaults' must hold exactly"),
        (lambda d: d["models"][0]["lifecycle"].update(status="sunset"), "lifecycle.status"),
        (lambda d: d["reasoning_allowance"].update(high=0), "reasoning_allowance"),
    ],
)
def test_a_malformed_capability_table_names_the_entry_and_field(
    tmp_path: Path, mutate: Any, expect: str
) -> None:
    path = write_capabilities(tmp_path, mutate)
    with pytest.raises(ConfigError) as info:
        load_capabilities(path)
    assert expect in str(info.value) and str(path) in str(info.value)


def test_cost_breakdown_and_savings() -> None:
    usage = Usage(1_000, 10, None, cached_input_tokens=800, cache_write_tokens=0)
    parts = cost_breakdown(usage, get_preset("claude-sonnet-5"))
    assert parts["uncached_input_usd"] == pytest.approx(200 * 3 / 1e6)
    assert parts["cache_read_usd"] == pytest.approx(800 * 0.3 / 1e6)
    assert parts["output_usd"] == pytest.approx(10 * 15 / 1e6)
    assert parts["total_usd"] == pytest.approx(cost_usd(usage, get_preset("claude-sonnet-5")))
    assert parts["cache_saving_usd"] == pytest.approx(800 * (3 - 0.3) / 1e6)
    write = cost_breakdown(Usage(1_000, 0, None, cache_write_tokens=800), get_preset("claude-sonnet-5"))
    assert write["cache_saving_usd"] == pytest.approx(-800 * 0.75 / 1e6)  # a write costs 1.25x the input
    unknown = cost_breakdown(usage, get_preset("gemini-3.5-flash-lite"))  # cache price unknown: full price
    assert unknown["cache_read_usd"] == pytest.approx(800 * 0.3 / 1e6) and unknown["cache_saving_usd"] == 0


def test_usage_adds_and_round_trips_through_records() -> None:
    a = Usage(10, 2, 5, cached_input_tokens=4, cache_write_tokens=1, reasoning_tokens=1)
    total = a + Usage(20, 3, None, cached_input_tokens=6)
    assert total == Usage(30, 5, 5, cached_input_tokens=10, cache_write_tokens=1, reasoning_tokens=1)
    assert Usage.from_record(total.to_record()) == total
    assert Usage.from_record({"input_tokens": 7, "output_tokens": 1, "image_tokens": None}) == Usage(7, 1)
    assert Usage.from_record({"input_tokens": "7", "cached_input_tokens": -3}) == Usage()  # untrusted


@pytest.mark.parametrize(
    "url",
    ["notaurl", "ftp://host/v1", "http://", "http://host:99999/v1", "http://ho st/v1", "", "http://:80"],
)
def test_bad_base_urls_are_refused_before_play(url: str) -> None:
    with pytest.raises(ConfigError, match="--base-url"):
        check_base_url(url)
    with pytest.raises(ConfigError):
        ModelSpec(base_url=url)


def test_urls_are_shown_without_credentials() -> None:
    assert validate_base_url("http://127.0.0.1:8000/v1/") == "http://127.0.0.1:8000/v1"
    assert (
        safe_url("https://bob:s3cret@gw.example.test:8443/v1?key=abc#x") == "https://gw.example.test:8443/v1"
    )


@pytest.mark.parametrize(
    ("field", "value", "expect"),
    [
        ("reasoning", "max", "reasoning must be one of off, low, medium, high"),
        ("timeout_s", 0, "timeout_s must be between"),
        ("server_kind", "tgi", "server_kind must be one of auto, openai, vllm"),
    ],
)
def test_model_options_are_validated(field: str, value: Any, expect: str) -> None:
    with pytest.raises(ConfigError, match=expect):
        ModelSpec(**{field: value})


def test_presets_follow_the_sdk_base_url_variables_with_their_price(no_keys: pytest.MonkeyPatch) -> None:
    pytest.importorskip("openai")
    pytest.importorskip("anthropic")
    no_keys.setenv("OPENAI_API_KEY", "sk-test-1234")
    no_keys.setenv("ANTHROPIC_API_KEY", "sk-ant-1234")
    no_keys.setenv("OPENAI_BASE_URL", "http://carol:pw123456@litellm.example.test:4000/v1")
    no_keys.setenv("ANTHROPIC_BASE_URL", "https://gateway.example.test/anthropic")
    with pytest.raises(ConfigError, match="must not hold a user name or password") as refused:
        load_model("gpt-4o-mini")  # credentials in a URL travel everywhere: refused, and not repeated
    assert "pw123456" not in str(refused.value) and "carol" not in str(refused.value)
    no_keys.setenv("OPENAI_BASE_URL", "http://litellm.example.test:4000/v1")
    gpt = load_model("gpt-4o-mini")
    assert gpt.vlm.base_url == gpt.base_url == "http://litellm.example.test:4000/v1"  # what the SDK gets
    assert gpt.prices == get_preset("gpt-4o-mini").prices
    claude = load_model(ModelSpec(model="claude-sonnet-5", reasoning="low", timeout_s=5.0))
    assert (
        claude.base_url == "https://gateway.example.test/anthropic"
        and claude.prices == get_preset("claude-sonnet-5").prices
    )
    assert claude.vlm.reasoning == "low" and claude.vlm.timeout_s == 5.0
    no_keys.setenv("OPENAI_BASE_URL", "not a url")
    with pytest.raises(ConfigError, match="OPENAI_BASE_URL"):
        load_model("demo")  # refused before anything is loaded, whatever the model


def test_asking_more_reasoning_than_a_model_has_is_a_config_error(no_keys: pytest.MonkeyPatch) -> None:
    pytest.importorskip("openai")
    no_keys.setenv("OPENAI_API_KEY", "sk-test-1234")
    with pytest.raises(ConfigError, match="--reasoning off"):
        load_model(ModelSpec(model="gpt-4o-mini", reasoning="high"))


def test_probe_names_what_a_server_is_and_why_it_cannot_be_reached() -> None:
    with serve_in_thread(model="served-1") as srv:
        info = probe_server(srv.base_url)
        assert info.models == ("served-1",) and info.kind == "generic"
        with pytest.raises(ConfigError, match="HTTP 404"):
            probe_server(f"http://127.0.0.1:{srv.port}/nope")
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    with pytest.raises(ConfigError, match=f"connection refused by 127.0.0.1:{closed}"):
        probe_server(f"http://127.0.0.1:{closed}/v1", timeout_s=2)
