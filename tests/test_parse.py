import pytest
from hypothesis import given
from hypothesis import strategies as st

from atari_vlm.prompts import parse_action

PONG = ["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"]


@pytest.mark.parametrize(
    ("text", "index", "how"),
    [
        ("ACTION: RIGHT", 2, "action_line"),
        ("action: left", 3, "action_line"),
        ("**Action:** RightFire", 4, "action_line"),
        ("ACTION: right_fire", 4, "action_line"),
        ("ACTION: 5", 5, "action_line"),
        ("ACTION = NOOP.", 0, "action_line"),
        ("I considered ACTION: LEFT but the ball is above.\nACTION: RIGHT", 2, "action_line"),
        ("ACTION: RIGHT then wait", 2, "action_line"),
        ("FIRE", 1, "bare"),
        ("  3. ", 3, "bare"),
        ("The ball is high, so I move with RIGHT.", 2, "mention"),
    ],
)
def test_answers_models_really_write(text, index, how):
    parsed = parse_action(text, PONG)
    assert (parsed.index, parsed.how) == (index, how)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "I am not sure.",
        "ACTION: JUMP",
        "ACTION: 17",
        "Either LEFT or RIGHT could work.",  # two candidates and no decision
        "wrap up, then fire away",  # lower-case words are prose, not action names
    ],
)
def test_answers_without_a_legal_action(text):
    assert parse_action(text, PONG).index is None


def test_an_invalid_last_action_line_falls_back_to_the_previous_valid_one():
    assert parse_action("ACTION: LEFT\nACTION: BANANA", PONG).index == 3


@given(st.text(max_size=3000))
def test_never_raises_and_the_action_is_always_legal(text):
    parsed = parse_action(text, PONG)
    assert parsed.index is None or 0 <= parsed.index < len(PONG)


@given(st.sampled_from(PONG), st.text(max_size=200))
def test_a_final_action_line_wins_over_any_preamble(name, preamble):
    assert parse_action(f"{preamble}\nACTION: {name}", PONG).index == PONG.index(name)


def test_huge_answers_are_bounded():
    assert parse_action("x" * 1_000_000 + "\nACTION: FIRE", PONG).index == 1
