"""The API of the original atari-vlm description ("the seed"), working as documented there.

Example:
    >>> from atari_vlm import AtariVLMEnvironment, DemoAgent
    >>> env = AtariVLMEnvironment(game_name="Pong-v5", resize_shape=(112, 112), frame_skip=8)
    >>> obs = env.reset()                  # the observation alone, as the seed documents
    >>> obs["image"], obs["text"], obs["action_space"], obs["frames"]   # PIL image, str, names, PIL list
    >>> agent = DemoAgent()
    >>> action = agent.select_action(obs, env.get_vlm_prompt("expert"))
    >>> obs, reward, terminated, truncated, info = env.step(action)

:class:`AtariVLMEnvironment` keeps the seed's contract, which differs from Gymnasium's in one place:
``reset()`` returns the observation alone (its info stays in ``env.reset_info``). So it is not a
Gymnasium env itself; ``env.env`` is one (:func:`atari_vlm.env.make_env`'s, whose ``reset`` returns
``(obs, info)``), for Gymnasium wrappers and tools. ``resize_shape`` is (height, width), as in
Gymnasium's ``ResizeObservation``.

The agents are thin adapters over the library's policy (:class:`atari_vlm.agent.VLMAgent`, built by
:func:`atari_vlm.workers.build_agent` from a run spec): the same request, parser, invalid-answer
feedback and cost accounting as ``atari-vlm play``, with the seed's ``select_action(obs, prompt)``
on top. One class, configured by a ``--model`` string; the named subclasses only choose the default.

:func:`render_recommendations` is the seed's ``--show-recommendations`` (``atari-vlm train
--show-recommendations``): its three picks beside today's presets, with prices from ``presets.json``
and only the figures atari-vlm has measured or computed itself (BENCHMARKS.md), never the seed's
unsourced ratings or scores.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from atari_vlm import imaging
from atari_vlm.agent import VLMAgent
from atari_vlm.env import AtariVLMEnv, make_env
from atari_vlm.games import game_info
from atari_vlm.models.costs import BudgetedVLM
from atari_vlm.models.presets import Preset, availabilities, availability, get_preset, recommend
from atari_vlm.models.registry import LoadedModel, load_model
from atari_vlm.prompts import render_system_prompt
from atari_vlm.spec import DecodingSpec, EnvSpec, ModelSpec, PromptSpec, RunSpec
from atari_vlm.workers import vlm_agent

DEFAULT_GAME = "Pong"
"""The game a hand-made observation (one without "game") is taken to be: only the action names and
the caller's system prompt reach the model, so it names the request, nothing more."""


class AtariVLMEnvironment:
    """The seed's environment: PIL images, action names, and ``reset()`` returning the observation.

    ``obs`` is a dict: ``image`` (PIL, what the model is shown), ``text`` (state description),
    ``action_space`` (the legal action names), ``frames`` (the stacked frames as PIL images),
    ``game``, and ``pixels`` / ``frame_arrays`` (the images as arrays, what agents send).
    ``step(action)`` returns Gymnasium's five values ``(obs, reward, terminated, truncated, info)``.

    Args:
        game_name: any spelling of an ALE game ("Pong-v5", "Pong", "ALE/Pong-v5").
        resize_shape: (height, width) of each frame the model sees (None: native 210x160).
        frame_skip: emulator frames per step (ALE v5's 4).
        seed: seed of the first reset (later resets continue its random stream).
        **options: any other option of :func:`atari_vlm.env.make_env` (frame_stack, grayscale, ...).
    """

    def __init__(
        self,
        game_name: str = "Pong-v5",
        resize_shape: tuple[int, int] | None = None,
        frame_skip: int = 4,
        *,
        seed: int | None = None,
        **options: Any,
    ):
        self.env: AtariVLMEnv = make_env(
            game_name, seed=seed, resize_shape=resize_shape, frame_skip=frame_skip, **options
        )
        self.game_name = self.env.game
        self.action_names: list[str] = self.env.action_names
        self.reset_info: dict[str, Any] = {}
        """The info dict of the last :meth:`reset` (Gymnasium's reset returns it beside the observation)."""

    @property
    def action_space(self) -> Any:
        """Gymnasium's ``Discrete`` space of the legal actions (``sample()`` picks one at random)."""
        return self.env.action_space

    def _convert(self, obs: dict[str, Any]) -> dict[str, Any]:
        return {
            "image": imaging.to_pil(obs["image"]),
            "text": obs["text"],
            "action_space": list(self.action_names),
            "game": self.game_name,
            "frames": [imaging.to_pil(f) for f in obs["frames"]],
            "pixels": obs["image"],  # the arrays behind "image" and "frames", so agents need not convert
            "frame_arrays": obs["frames"],
        }

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> dict[str, Any]:
        """Start an episode and return its first observation (the info goes to :attr:`reset_info`)."""
        obs, info = self.env.reset(seed=seed, options=options)
        self.reset_info = dict(info)
        return self._convert(obs)

    def step(self, action: int) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._convert(obs), reward, terminated, truncated, dict(info)

    def render(self) -> np.ndarray:
        """The current native 210x160 RGB screen."""
        return self.env.last_rgb_frame

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> AtariVLMEnvironment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_vlm_prompt(self, prompt_type: str = "basic") -> str:
        """The system prompt of a style (``basic``, ``cot``, ``expert``) or template file for this game."""
        observation = self.env.observation_spec
        return render_system_prompt(
            PromptSpec(prompt=prompt_type).prompt,
            game_info(self.game_name),
            self.action_names,
            frame_stack=observation.frame_stack,
            layout=observation.frame_layout,
            state_text=observation.state_text,
        )


class ModelAgent:
    """``select_action(obs, prompt) -> int`` over any model atari-vlm can load.

    Each call is one decision of the library's policy: the same request as ``atari-vlm play`` with
    ``prompt`` as the system prompt, the same parser, the "your previous answer named no legal action"
    feedback on the next call, and every call priced (``cost_usd``, ``usage``).

    Args:
        model: a ``--model`` string: ``demo``, ``openai:<model>``, a checkpoint directory, ...
        api_key: for API models; else read from the provider's environment variable.
        max_tokens: per answer (default: enough for the longest prompt style's reasoning).
        **options: fields of :class:`~atari_vlm.spec.ModelSpec` (base_url, device, ...).
    """

    default_model = "auto"
    default_max_tokens = 256

    def __init__(
        self,
        model: str | None = None,
        *,
        api_key: str | None = None,
        max_tokens: int | None = None,
        **options: Any,
    ):
        self.model_spec = ModelSpec(model=model or self.default_model, api_key=api_key, **options)
        loaded = load_model(self.model_spec)
        self.loaded: LoadedModel = dataclasses.replace(
            loaded, vlm=BudgetedVLM(loaded.vlm, None, loaded.prices)
        )
        self.max_tokens = max_tokens or self.default_max_tokens
        self.last_answer = ""
        self.invalid_answers = 0
        self._policies: dict[tuple[str, tuple[str, ...], str], VLMAgent] = {}
        self._loop = asyncio.new_event_loop()

    @property
    def cost_usd(self) -> float | None:
        """Dollars spent so far (None when no price is known for the model)."""
        vlm = self.loaded.vlm
        return vlm.spent_usd if vlm.prices is not None else None

    def _policy(self, game: str, names: tuple[str, ...], prompt: str) -> VLMAgent:
        """One policy per game, action set and system prompt: its feedback carries over between calls."""
        key = (game, names, prompt)
        if key not in self._policies:
            spec = RunSpec(
                env=EnvSpec(game=game),
                model=self.model_spec,
                decoding=DecodingSpec(max_tokens=self.max_tokens),
            )
            self._policies[key] = vlm_agent(spec, names, self.loaded.vlm, system_prompt=prompt)
        return self._policies[key]

    def select_action(self, obs: dict[str, Any], prompt: str) -> int:
        """Ask the model; return the index of its action (NOOP, or 0, when it names none)."""
        names = tuple(obs["action_space"])
        policy = self._policy(str(obs.get("game", DEFAULT_GAME)), names, prompt)
        pixels = obs.get("pixels")
        if pixels is None:
            image = obs["image"]
            pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
        frames = obs.get("frame_arrays")
        observation = {
            "image": pixels,
            "frames": frames if frames is not None else pixels[None],
            "text": obs["text"],
        }
        decision = self._loop.run_until_complete(policy.act(observation))
        self.last_answer = decision.text
        self.invalid_answers += not decision.parsed
        return decision.action

    def close(self) -> None:
        self._loop.run_until_complete(self.loaded.vlm.aclose())
        self._loop.close()


class DemoAgent(ModelAgent):
    """The tiny random-weight local VLM: runs anywhere, plays noise."""

    default_model = "demo"


class GPT4VAgent(ModelAgent):
    """OpenAI's vision models: the ``gpt-4o`` preset by default (``--vlm gpt-4o``'s model, with its
    price and rules); key from ``api_key`` or ``OPENAI_API_KEY``, endpoint from ``base_url`` or
    ``OPENAI_BASE_URL`` (a proxy for the same model)."""

    default_model = "gpt-4o"


class ClaudeAgent(ModelAgent):
    """Anthropic's Claude; key from ``ANTHROPIC_API_KEY``.

    The seed's Claude 3.5 Sonnet is retired by Anthropic, so the default is the ``claude-sonnet-5``
    preset (thinking off for play); ``ClaudeAgent(model="claude-3.5-sonnet")`` still names the seed's
    model.
    """

    default_model = "claude-sonnet-5"


class GeminiAgent(ModelAgent):
    """Google's Gemini; key from ``GEMINI_API_KEY``/``GOOGLE_API_KEY``.

    The seed's Gemini 1.5 Pro is retired by Google, so the default is the ``gemini-3.5-flash-lite``
    preset; ``GeminiAgent(model="gemini-1.5-pro")`` still names the seed's model.
    """

    default_model = "gemini-3.5-flash-lite"


class QwenVLAgent(ModelAgent):
    """Qwen2-VL-7B-Instruct in-process (the ``qwen-vl`` preset), or pass a checkpoint directory."""

    default_model = "qwen-vl"


class LLaVAAgent(ModelAgent):
    """LLaVA-1.6 in-process (the ``llava-1.6`` preset), or pass a checkpoint directory."""

    default_model = "llava-1.6"


# --- the seed's --show-recommendations ----------------------------------------------------------------

FactKind = Literal["measured", "computed", "not measured"]


@dataclass(frozen=True)
class Fact:
    """A figure atari-vlm has itself, and the section of BENCHMARKS.md it is taken from.

    ``measured``: run here; ``computed``: arithmetic on documented rules and the presets' prices;
    ``not measured``: what is still missing. Every number in ``text`` appears in that section (a test
    checks it), so the table cannot drift from the benchmarks.
    """

    text: str
    section: int
    kind: FactKind


@dataclass(frozen=True)
class Recommendation:
    """One of the seed's picks: its words, the preset of its model, and what to use today."""

    role: str
    seed_pick: str
    seed_preset: str
    today: tuple[str, ...]
    facts: tuple[Fact, ...]


SEED_RECOMMENDATIONS: tuple[Recommendation, ...] = (
    Recommendation(
        role="best overall",
        seed_pick="GPT-4o (OpenAI)",
        seed_preset="gpt-4o",
        today=("gpt-4o", "gpt-4o-mini"),
        facts=(
            Fact("a native 210x160 frame is 255 image tokens at high detail, 85 at low", 4, "computed"),
            Fact(
                "a Pong decision with 4 exemplar frames: $0.004245 uncached, $0.002551 with the prompt "
                "cache warm",
                8,
                "computed",
            ),
        ),
    ),
    Recommendation(
        role="best open",
        seed_pick="Qwen2-VL-7B (Alibaba)",
        seed_preset="qwen-vl",
        today=("qwen-vl", "qwen2.5-vl-7b", "qwen2.5-vl-3b"),
        facts=(
            Fact(
                "Qwen2-VL's own image processor makes 48 tokens of a native frame, 12 of a 105x80 one",
                4,
                "measured",
            ),
            Fact("speed on a GPU: not run yet (no GPU on the benchmark machine)", 5, "not measured"),
        ),
    ),
    Recommendation(
        role="best reasoning",
        seed_pick="Claude 3.5 Sonnet (Anthropic)",
        seed_preset="claude-3.5-sonnet",
        today=("claude-sonnet-5",),
        facts=(
            Fact(
                "a native frame is 45 image tokens; a Pong prompt with 4 exemplars (~515 tokens) is under "
                "the 1,024-token cache minimum, so caching saves nothing there",
                8,
                "computed",
            ),
        ),
    ),
)
"""The seed's three picks (its "Top VLM Recommendations"), without its ratings, speeds or costs."""

NOT_SHOWN = (
    "Not shown: the seed's star ratings, speeds, costs per game and expected scores. No source backs "
    "them and atari-vlm has not measured them."
)
NO_SCORES = (
    "Game scores: atari-vlm has played none of these models yet (its benchmark machine has no API key "
    "and no weights), so it shows no score for them; `atari-vlm bench --games Pong --models "
    "gpt-4o-mini,claude-sonnet-5 --seeds 0-4` measures them, beside the random agent."
)


def _status(preset: Preset) -> str:
    """Whether the provider still serves the model (API presets), or that its weights are open."""
    capability = preset.capability
    if capability is None:
        return "open weights"
    life = capability.lifecycle
    when = f" on {life.date}" if life.date else ""
    if life.retired:
        return f"retired by {preset.provider}{when}"
    if life.status == "unknown":
        return "no shutdown on record"  # capabilities.json lists none for it
    return f"{life.status}{when}"


def _price(preset: Preset) -> str:
    if not preset.is_api:
        return "free (your hardware)"
    prices = preset.prices
    return f"${prices.input_per_mtok:g} / ${prices.output_per_mtok:g} (read {prices.date})"


def render_recommendations(console: Console, *, api_key: str | None = None, gpu: bool | None = None) -> None:
    """Print the seed's recommendation table with today's presets, their prices (``presets.json``),
    whether each is usable here now, and atari-vlm's own figures (BENCHMARKS.md), then a
    recommendation for this machine."""
    table = Table(title="The seed's VLM recommendations, today (prices: USD per million tokens, in / out)")
    for column in (
        "",
        "the seed's pick",
        "use today: --vlm",
        "status",
        "price",
        "runs on",
        "usable here now",
    ):
        table.add_column(column, overflow="fold")
    for pick in SEED_RECOMMENDATIONS:
        seed_preset = get_preset(pick.seed_preset)
        first = (pick.role, f"{pick.seed_pick}, preset {seed_preset.name}: {_status(seed_preset)}")
        for i, name in enumerate(pick.today):
            preset = get_preset(name)
            ok, why = availability(preset, api_key=api_key)
            table.add_row(
                *(escape(cell) for cell in (first if i == 0 else ("", ""))),
                escape(preset.name),
                escape(_status(preset)),
                escape(_price(preset)),
                escape(preset.hardware),
                f"{'[green]yes[/green]' if ok else '[red]no[/red]'}: {escape(why)}",
                end_section=i == len(pick.today) - 1,
            )
    console.print(table)
    console.print("[bold]What atari-vlm has measured or computed itself[/bold] (BENCHMARKS.md, by section):")
    for pick in SEED_RECOMMENDATIONS:
        for fact in pick.facts:
            console.print(
                f"- {escape(pick.role)} ({escape(pick.today[0])}): {escape(fact.text)} "
                f"[dim]({fact.kind}, section {fact.section})[/dim]"
            )
    console.print(escape(NO_SCORES))
    console.print(escape(NOT_SHOWN))
    console.print("Every preset, with its price source and notes: `atari-vlm models`.")
    rows = availabilities(api_key=api_key)
    console.print(f"[bold]For this machine:[/bold] {escape(recommend(rows, gpu=gpu))}")
