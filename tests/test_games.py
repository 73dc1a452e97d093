import pytest

from atari_vlm.errors import ConfigError
from atari_vlm.games import all_games, game_info, resolve_game


def test_catalog_has_every_ale_v5_game():
    games = all_games()
    assert len(games) == 104
    assert {"Pong", "Breakout", "SpaceInvaders", "MsPacman", "Qbert", "Seaquest"} <= set(games)


@pytest.mark.parametrize("name", ["Pong", "pong", "Pong-v5", "ALE/Pong-v5", " PONG ", "PongNoFrameskip-v4"])
def test_spellings_resolve_to_the_canonical_name(name):
    assert resolve_game(name) == "Pong"


@pytest.mark.parametrize(
    "name", ["space_invaders", "Space Invaders", "ALE/SpaceInvaders-v5", "spaceinvaders"]
)
def test_separators_do_not_matter(name):
    assert resolve_game(name) == "SpaceInvaders"


def test_unknown_game_lists_closest_matches():
    with pytest.raises(ConfigError, match=r"unknown game 'Pongg'.*Pong"):
        resolve_game("Pongg")
    with pytest.raises(ConfigError, match=r"closest matches: .*Breakout"):
        resolve_game("breakot")


@pytest.mark.parametrize("bad", ["", "   ", None, 3])
def test_empty_or_non_string_names_are_rejected(bad):
    with pytest.raises(ConfigError, match="non-empty string"):
        resolve_game(bad)


def test_game_info_marks_rich_games_and_describes_every_game():
    pong = game_info("pong")
    assert pong.env_id == "ALE/Pong-v5" and pong.rich_state and "paddle" in pong.description
    assert "RIGHT moves your paddle up" in pong.action_hints
    other = game_info("Asterix")
    assert not other.rich_state and other.description.startswith("Asterix")
    assert game_info("MontezumaRevenge").description.startswith("Montezuma Revenge")
