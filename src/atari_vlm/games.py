"""The catalog of playable games: every ``ALE/*-v5`` id that ale-py registers, plus what a model
should be told about each one.

The list of games comes from Gymnasium's registry (ale-py ships the ROMs), never from a hand-kept
list. Per-game knowledge (a one-line description, what the actions do) is data in ``_NOTES``; games
without notes get a generic description built from their name.
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass

from atari_vlm.errors import ConfigError


@dataclass(frozen=True)
class GameInfo:
    """What atari-vlm knows about one game."""

    name: str  # canonical ALE name, e.g. "SpaceInvaders"
    env_id: str  # e.g. "ALE/SpaceInvaders-v5"
    description: str  # one or two sentences: the goal and what the player controls
    action_hints: str  # what the less obvious actions do in this game ("" when nothing to add)
    expert_tips: str  # strategy lines for the expert prompt (generic ones for games without notes)
    rich_state: bool  # whether the state text reads positions from RAM (see state_text)


# Per-game notes, for the games whose controls a model could misread from the action names alone.
_NOTES: dict[str, tuple[str, str]] = {
    "Pong": (
        "Pong: you control the green paddle on the right side; the computer controls the orange paddle "
        "on the left. Hit the ball past the opponent to score; the first to 21 points wins.",
        "RIGHT moves your paddle up, LEFT moves it down; FIRE serves; NOOP keeps it still.",
    ),
    "Breakout": (
        "Breakout: you move a paddle along the bottom of the screen to bounce a ball into the rows of "
        "bricks above. Each brick broken scores points; missing the ball costs a life.",
        "FIRE launches a new ball; LEFT and RIGHT move the paddle.",
    ),
    "SpaceInvaders": (
        "Space Invaders: you control a laser cannon at the bottom of the screen. Shoot the rows of aliens "
        "before they reach the ground, and dodge their bombs behind the shields.",
        "FIRE shoots; LEFT and RIGHT move the cannon; RIGHTFIRE and LEFTFIRE move and shoot.",
    ),
    "MsPacman": (
        "Ms. Pac-Man: guide Ms. Pac-Man through the maze eating dots and avoid the four ghosts. Eating a "
        "power pellet in a corner makes the ghosts edible for a short time.",
        "UP, DOWN, LEFT, RIGHT and the diagonals steer through the maze; there is no fire button.",
    ),
    "Qbert": (
        "Q*bert: hop Q*bert around a pyramid of cubes, changing each cube top to the target colour, while "
        "avoiding the enemies and not jumping off the edge.",
        "The screen is tilted: UP hops up-right, RIGHT hops down-right, LEFT hops up-left, "
        "DOWN hops down-left.",
    ),
    "Seaquest": (
        "Seaquest: pilot a submarine, shoot sharks and enemy subs, rescue divers, and surface before your "
        "oxygen runs out. Surfacing with six divers scores a bonus.",
        "FIRE shoots torpedoes in the direction you face; UP surfaces; the diagonals combine moves.",
    ),
}

# Strategy an expert player would give, for the ``expert`` prompt style.
_EXPERT_TIPS: dict[str, str] = {
    "Pong": (
        "- Keep your paddle level with the ball, and move early: read the ball's direction from its motion.\n"
        "- When the ball moves away from you, return the paddle toward the middle.\n"
        "- Hitting the ball with the edge of the paddle sends it at a steeper angle the opponent misses."
    ),
    "Breakout": (
        "- Keep the paddle under the ball; never let it fall past you.\n"
        "- Press FIRE to launch the ball when none is in play.\n"
        "- Break a channel up one side: a ball trapped above the bricks scores many points for free."
    ),
    "SpaceInvaders": (
        "- Shoot the lowest invaders first: the grid speeds up and drops as it nears you.\n"
        "- Stay under the shields when bombs fall; step out only to shoot.\n"
        "- Shoot the mystery ship crossing the top for bonus points when it is safe."
    ),
    "MsPacman": (
        "- Clear the dots corridor by corridor and keep moving; stopping gets you caught.\n"
        "- Keep the nearest ghost far away; turn before it reaches your corridor.\n"
        "- Save the power pellets for when ghosts are close, then chase the blue ghosts."
    ),
    "Qbert": (
        "- Change every cube to the target colour; plan a path that visits each cube once.\n"
        "- Never hop off the pyramid's edge unless a flying disc is there.\n"
        "- Watch the red balls and Coily falling from the top; move away from their path."
    ),
    "Seaquest": (
        "- Watch the oxygen bar: surface (UP) before it runs out, ideally with divers aboard.\n"
        "- Shoot sharks and subs in your lane; change depth to avoid the ones you cannot hit.\n"
        "- Pick up divers by touching them; six divers on board make surfacing pay a bonus."
    ),
}
_GENERIC_TIPS = (
    "- Work out from the screen which object you control and what gives points.\n"
    "- Avoid whatever costs lives; take small safe gains over risky moves.\n"
    "- If the game waits for you, FIRE usually starts it."
)

_SUFFIX = re.compile(r"(noframeskip)?-v\d+$", re.IGNORECASE)


def _key(name: str) -> str:
    """Normalise a user's spelling of a game: case, "ALE/" prefix, version suffix, separators."""
    name = name.strip()
    if name.lower().startswith("ale/"):
        name = name[4:]
    name = _SUFFIX.sub("", name)
    return re.sub(r"[\s_\-.]", "", name).lower()


@functools.lru_cache(maxsize=1)
def _registry() -> dict[str, str]:
    """Normalised key -> canonical name, for every ``ALE/*-v5`` id registered by ale-py."""
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)
    names = sorted(
        env_id[4:-3] for env_id in gym.registry if env_id.startswith("ALE/") and env_id.endswith("-v5")
    )
    return {_key(n): n for n in names}


def all_games() -> list[str]:
    """Every playable game's canonical name, sorted (104 with ale-py 0.9 and later)."""
    return sorted(_registry().values())


def resolve_game(name: str) -> str:
    """Canonical name for "Pong", "pong", "Pong-v5", "ALE/Pong-v5", "space_invaders", ...

    Raises:
        ConfigError: the name matches no game; the message lists the closest matches.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"a game name must be a non-empty string, got {name!r}")
    registry = _registry()
    key = _key(name)
    if key in registry:
        return registry[key]
    close = difflib.get_close_matches(key, list(registry), n=5, cutoff=0.5)
    hint = ", ".join(registry[k] for k in close) if close else "run `atari-vlm games` for the list"
    raise ConfigError(f"unknown game {name!r}; closest matches: {hint}")


def _spaced(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name)


def game_info(name: str) -> GameInfo:
    """Everything the catalog knows about a game (name resolved as by :func:`resolve_game`)."""
    from atari_vlm.state_text import RICH_GAMES

    canonical = resolve_game(name)
    description, hints = _NOTES.get(
        canonical,
        (
            f"{_spaced(canonical)}: an Atari 2600 game. Maximise your score; avoid losing lives.",
            "",
        ),
    )
    return GameInfo(
        name=canonical,
        env_id=f"ALE/{canonical}-v5",
        description=description,
        action_hints=hints,
        expert_tips=_EXPERT_TIPS.get(canonical, _GENERIC_TIPS),
        rich_state=canonical in RICH_GAMES,
    )
