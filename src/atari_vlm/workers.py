"""What plays one game: an env and an agent, built from the run spec. The one place agents are made.

``play``, ``bench``, ``train``, the Ray workers and the seed API's agents all build through
:func:`build_agent`, so that one spec gives the same prompt, parser, feedback and costs everywhere.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

from atari_vlm.agent import Agent, RandomAgent, VLMAgent
from atari_vlm.env import AtariVLMEnv, ale_env
from atari_vlm.errors import ConfigError
from atari_vlm.experts import ExpertAgent
from atari_vlm.games import game_info
from atari_vlm.memory import Exemplar
from atari_vlm.models.base import VLM
from atari_vlm.prompts.builder import PromptBuilder
from atari_vlm.spec import EnvSpec, ModelSpec, RunSpec

__all__ = [
    "HOSTED_API_CONCURRENCY",
    "WorkerFactory",
    "action_names",
    "build_agent",
    "model_spec_for",
    "prompt_builder",
    "vlm_agent",
    "worker_factory",
]

WorkerFactory = Callable[[], tuple[AtariVLMEnv, Agent]]
HOSTED_API_CONCURRENCY = 8
"""Default bound on requests in flight to a hosted API: well inside common rate limits (a 429 slows
every game down together anyway); a server of one's own gets one slot per game."""


def model_spec_for(spec: RunSpec) -> ModelSpec:
    """The model section with its concurrency resolved: what a backend is built with for this run."""
    model = spec.model
    if model.concurrency is not None:
        return model
    games = max(1, spec.num_envs)
    concurrency = games if model.base_url else min(games, HOSTED_API_CONCURRENCY)
    return dataclasses.replace(model, concurrency=concurrency)


def action_names(spec: RunSpec) -> list[str]:
    """The legal action names of the spec's game and action space (the ROM is loaded once per process:
    a load costs 0.1-0.2 s and holds the GIL)."""
    return list(_action_names(spec.game, spec.env.full_action_space))


@functools.lru_cache(maxsize=256)
def _action_names(game: str, full_action_space: bool) -> tuple[str, ...]:
    env = ale_env(EnvSpec(game=game, full_action_space=full_action_space), render_mode=None)
    try:
        return tuple(env.unwrapped.get_action_meanings())
    finally:
        env.close()


def prompt_builder(spec: RunSpec, names: Sequence[str], *, system_prompt: str | None = None) -> PromptBuilder:
    """The prompt builder of ``spec`` (a bad prompt template fails here, before any model loads)."""
    return PromptBuilder(
        game_info(spec.game), names, spec.prompt, spec.observation, spec.decoding, system_prompt=system_prompt
    )


def vlm_agent(
    spec: RunSpec,
    names: Sequence[str],
    model: VLM,
    *,
    exemplars: Sequence[Exemplar] = (),
    system_prompt: str | None = None,
) -> VLMAgent:
    """The VLM policy of ``spec`` for a game with legal actions ``names``."""
    builder = prompt_builder(spec, names, system_prompt=system_prompt)
    return VLMAgent(model, builder, exemplars=exemplars)


def build_agent(
    spec: RunSpec, env: AtariVLMEnv, model: VLM | None, *, exemplars: Sequence[Exemplar] = ()
) -> Agent:
    """The agent ``spec.agent`` names, for ``env``: the VLM policy (needs ``model``), the random
    baseline or the RAM expert."""
    if spec.agent == "random":
        return RandomAgent(env.action_names)
    if spec.agent == "expert":
        return ExpertAgent(env)
    if model is None:
        raise ConfigError("the vlm agent needs a model")
    return vlm_agent(spec, env.action_names, model, exemplars=exemplars)


def worker_factory(spec: RunSpec, model: VLM | None, *, exemplars: Sequence[Exemplar] = ()) -> WorkerFactory:
    """Builds (env, agent) pairs for ``spec``; every pair shares ``model``."""

    def make_worker() -> tuple[AtariVLMEnv, Agent]:
        env = AtariVLMEnv(spec.env, spec.observation)
        return env, build_agent(spec, env, model, exemplars=exemplars)

    return make_worker
