"""Agents turn observations into actions: the VLM policy, and the random baseline.

The policy (:class:`VLMAgent`) asks the model for each decision with a request from the prompt
builder (:mod:`atari_vlm.prompts.builder`), then turns the answer into a legal action with the parser
(:mod:`atari_vlm.prompts.parse`). An agent keeps state only within an episode (history, the feedback
about an unusable answer); ``reset`` is called at the start of each one. Agents are built from the run
spec by :func:`atari_vlm.workers.build_agent`.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from atari_vlm.errors import ConfigError
from atari_vlm.memory import Exemplar
from atari_vlm.models.base import VLM, Completion, DecodeMode, Part, Request, Usage
from atari_vlm.prompts import invalid_answer_feedback, parse_action, reprompt_feedback
from atari_vlm.prompts.builder import PromptBuilder, Recall

FALLBACK_ACTION = "NOOP"
HISTORY_WHY_CHARS = 80


HowObtained = Literal["scored", "constrained", "parsed", "fallback", "policy"]
"""How a decision's action was obtained: the backend scored every legal action, or could only answer
a legal one (constrained), or its free text was parsed, or it named none and the fallback was played;
``policy`` for agents without a model (random, expert)."""


@dataclass(frozen=True)
class Decision:
    """One chosen action and how it was reached."""

    action: int
    action_name: str
    text: str = ""  # the model's answer ("" for agents without a model)
    parsed: bool = True  # False when the answer held no legal action and the fallback was played
    obtained: HowObtained = "policy"
    probs: dict[str, float] | None = None  # each legal action's probability, where the backend says
    constraint_ignored: bool = False  # a constrained answer outside the legal set: the server ignored it
    constraint_note: str | None = None  # why the backend answered free although asked to constrain
    usage: Usage = field(default_factory=Usage)
    latency_s: float = 0.0
    retries: int = 0
    cost_usd: float | None = None  # None: no price known (a custom server), or no model
    reprompts: int = 0  # times the model was asked again after an answer with no legal action
    usage_estimated: bool = False  # the server's usage was unbelievable: counted at atari-vlm's estimate
    answer_truncated: bool = False  # the answer was longer than a backend keeps, and was cut
    # The request whose answer this is (the last one, after reprompts): what the run records as sent.
    request: Request | None = field(default=None, compare=False, repr=False)


class Agent(Protocol):
    """Anything that picks actions for one game."""

    async def act(self, obs: dict[str, Any]) -> Decision: ...

    def reset(self, seed: int | None = None) -> None: ...


class RandomAgent:
    """Uniformly random legal actions, seeded: the baseline every score is compared with."""

    def __init__(self, action_names: Sequence[str], seed: int | None = None):
        self.action_names = list(action_names)
        self._rng = np.random.default_rng(seed)

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self._rng = np.random.default_rng(seed)

    async def act(self, obs: dict[str, Any]) -> Decision:
        index = int(self._rng.integers(len(self.action_names)))
        return Decision(index, self.action_names[index])


class VLMAgent:
    """The policy: a request per decision from ``builder``, the model's answer parsed into an action.

    Args:
        model: any :class:`~atari_vlm.models.base.VLM`.
        builder: the prompt builder of this game and spec.
        exemplars: remembered decisions shown as examples (in-context learning).
    """

    def __init__(self, model: VLM, builder: PromptBuilder, *, exemplars: Sequence[Exemplar] = ()):
        self.model = model
        self.builder = builder
        self.action_names = list(builder.action_names)
        self._fallback = (
            self.action_names.index(FALLBACK_ACTION) if FALLBACK_ACTION in self.action_names else 0
        )
        self._feedback = ""
        prompt = builder.prompt
        self._history: deque[Recall] = deque(maxlen=prompt.history_steps)
        self._history_images: deque[tuple[int, np.ndarray]] = deque(maxlen=prompt.history_images)
        self._step = 0
        self._exemplar_parts: tuple[Part, ...] = ()
        self.set_exemplars(exemplars)

    @property
    def system_prompt(self) -> str:
        return self.builder.system_prompt

    @property
    def max_tokens(self) -> int:
        return self.builder.max_tokens

    def set_exemplars(self, exemplars: Sequence[Exemplar]) -> None:
        """Replace the examples shown to the model (rendered once here, not at every decision)."""
        self._exemplar_parts = self.builder.exemplar_parts(exemplars)

    def reset(self, seed: int | None = None) -> None:
        self._feedback = ""
        self._history.clear()
        self._history_images.clear()
        self._step = 0

    @property
    def decode(self) -> DecodeMode:
        """The decoding this decision asks for: the spec's, or with ``auto`` the strongest the backend
        offers (scoring without reasoning, then constrained, then free text)."""
        return resolve_decode(self.builder.decoding.decode, self.model, reasoning=self.builder.reasoning)

    def build_request(self, obs: dict[str, Any]) -> Request:
        """The request for one decision: the system prompt, then exemplars, history and this turn."""
        return self.builder.request(
            obs,
            exemplars=self._exemplar_parts,
            history=tuple(self._history),
            history_images=tuple(self._history_images),
            feedback=self._feedback,
            decode=self.decode,
        )

    def decide(self, completion: Completion) -> Decision:
        """Turn a completion into a decision: the backend's constrained or scored pick when it is a
        legal action, else its text parsed; the fallback (and, next time, a word about it) otherwise.

        A constrained or scored answer outside the legal set means the backend ignored the constraint:
        it is counted apart (``constraint_ignored``), never passed off as a parsed answer."""
        index: int | None = None
        ignored = False
        obtained: HowObtained = "parsed"
        text = completion.text if isinstance(completion.text, str) else ""
        if completion.obtained in ("scored", "constrained"):
            if completion.choice in self.action_names:
                index, obtained = self.action_names.index(completion.choice), completion.obtained
            else:
                ignored = True
        else:
            index = parse_action(text, self.action_names).index
        ok = index is not None
        if index is None:
            index, obtained = self._fallback, "fallback"
        self._feedback = "" if ok else invalid_answer_feedback(self.action_names[self._fallback])
        return Decision(
            action=index,
            action_name=self.action_names[index],
            text=text,
            parsed=ok,
            obtained=obtained,
            probs=_legal_probs(completion.choice_probs, self.action_names),
            constraint_ignored=ignored,
            constraint_note=completion.constraint_note,
            usage=completion.usage,
            latency_s=completion.latency_s,
            retries=completion.retries,
            cost_usd=completion.cost_usd,
            usage_estimated=completion.usage_estimated,
            answer_truncated=completion.answer_truncated,
        )

    def _remember(self, obs: dict[str, Any], decision: Decision) -> None:
        self._step += 1
        if self._history.maxlen:
            why = ""
            if self.builder.prompt.answer_format == "line":
                words = " ".join(decision.text.split())[:HISTORY_WHY_CHARS]
                why = words.split("ACTION")[0].strip(" .:-")
            self._history.append(Recall(self._step, decision.action_name, why))
        if self._history_images.maxlen:
            self._history_images.append((self._step, obs["image"]))

    async def act(self, obs: dict[str, Any]) -> Decision:
        """One decision; an unusable answer is asked again (with the feedback) up to
        ``DecodingSpec.reprompts`` times, every call's tokens, cost and time counted in the decision."""
        request = self.build_request(obs)
        decision = self.decide(await self.model.generate(request))
        for again in range(1, self.builder.decoding.reprompts + 1):
            if decision.parsed:
                break
            self._feedback = reprompt_feedback()  # nothing was played yet: ask again
            request = self.build_request(obs)
            retry = self.decide(await self.model.generate(request))
            decision = _combined(decision, retry, reprompts=again)
        decision = dataclasses.replace(decision, request=request)
        self._remember(obs, decision)
        return decision


def supported_decodes(model: Any) -> tuple[str, ...]:
    """The decodings a backend offers: its ``decode_modes`` (a local model: free, constrained, score),
    else constrained where ``supports_constrained`` says so (an API backend), else free text."""
    modes = getattr(model, "decode_modes", None)
    if isinstance(modes, tuple) and "free" in modes:
        return modes
    return ("free", "constrained") if getattr(model, "supports_constrained", False) is True else ("free",)


def resolve_decode(wanted: str, model: Any, *, reasoning: bool) -> DecodeMode:
    """``wanted`` (a DecodingSpec.decode) for ``model``: ``auto`` is scoring for answers without
    reasoning, then constrained, then free; an explicit mode the backend does not offer is refused.

    Raises:
        ConfigError: an explicit mode the backend cannot do.
    """
    modes = supported_decodes(model)
    if wanted == "auto":
        if "score" in modes and not reasoning:
            return "score"
        return "constrained" if "constrained" in modes else "free"
    if wanted not in modes:
        raise ConfigError(
            f"--decode {wanted} is not something {getattr(model, 'name', 'this model')} can do; it offers "
            f"{', '.join(modes)} (or --decode auto)"
        )
    return wanted  # type: ignore[return-value]


def _legal_probs(probs: Any, names: Sequence[str]) -> dict[str, float] | None:
    """A backend's probabilities, kept only when they are numbers over exactly the legal actions."""
    if not isinstance(probs, dict) or set(probs) != set(names):
        return None
    if not all(
        isinstance(p, (int, float)) and not isinstance(p, bool) and 0.0 <= p <= 1.0 for p in probs.values()
    ):
        return None
    return {name: round(float(probs[name]), 6) for name in names}


def _combined(first: Decision, then: Decision, *, reprompts: int) -> Decision:
    """``then``'s answer with what both calls cost."""
    costs = [c for c in (first.cost_usd, then.cost_usd) if c is not None]
    return dataclasses.replace(
        then,
        usage=first.usage + then.usage,
        latency_s=first.latency_s + then.latency_s,
        retries=first.retries + then.retries,
        cost_usd=sum(costs) if costs else None,
        reprompts=reprompts,
        usage_estimated=first.usage_estimated or then.usage_estimated,
    )
