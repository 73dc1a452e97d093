import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atari_vlm.prompts import parse, parse_action

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
        # JSON answers are read as JSON: the action field decides, not the reasoning's words.
        ('{"action":"LEFT","reasoning":"... action: RIGHT"}', 3, "json"),
        ('{"reasoning": "ACTION: RIGHT would miss", "action": "LEFT"}', 3, "json"),
        ('```json\n{"reasoning": "the ball is low", "action": "right_fire"}\n```', 4, "json"),
        ('Sure. {"Action": 5}', 5, "json"),
        ('{"plan": "wait"} then {"action": "FIRE"}', 1, "json"),
        ('{"action": "LEFT"} ... {"action": "RIGHT"}', 2, "json"),  # the last object decides
        ('{"note": "no action key"}\nACTION: LEFT', 3, "action_line"),
        # Negated mentions are not choices.
        ("Don't FIRE, move LEFT.", 3, "mention"),
        ("I will not go RIGHT; LEFT it is", 3, "mention"),
        ("Avoid FIRE now. RIGHT catches the ball.", 2, "mention"),
        ("LEFT instead of RIGHT", 3, "mention"),
        # Verbs before the name on an action line.
        ("**Action:** Move Left", 3, "action_line"),
        ("ACTION: press the FIRE button", 1, "action_line"),
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
        "Do not FIRE now",  # the only action named is ruled out
        "Never RIGHT, never LEFT.",
        '{"action": "JUMP", "reasoning": "ACTION: LEFT"}',  # the JSON answer is final, and illegal
        '{"action": 6}',
        '{"action": true}',
        '{"action": ["LEFT"]}',
    ],
)
def test_answers_without_a_legal_action(text):
    assert parse_action(text, PONG).index is None


@pytest.mark.parametrize("text", ["ACTION: 6", "6", "ACTION: 06", '{"action": 6}', '{"action": "6"}'])
def test_the_number_one_past_the_last_action_is_not_an_action(text):
    """Numbers run 0..len - 1: len itself is out of range (an off-by-one would play a crash)."""
    assert parse_action(text, PONG).index is None
    assert parse_action(text.replace("6", "5"), PONG).index == 5


def test_the_docstrings_examples_parse():
    """The module docstring promises these answers parse; each must appear there verbatim."""
    names = ["NOOP", "FIRE", "UP", "RIGHT", "LEFT", "DOWN"]
    examples = {
        "ACTION: UP": 2,
        "action: 2": 2,
        "**Action:** Move Up": 2,
        '{"action": "UP"}': 2,
        "Do not FIRE now; move LEFT.": 4,
    }
    for text, index in examples.items():
        assert text in parse.__doc__
        assert parse_action(text, names).index == index, text


@given(st.sampled_from(PONG), st.sampled_from(PONG), st.text(max_size=200))
def test_a_json_action_wins_over_any_reasoning(name, decoy, reasoning):
    answer = json.dumps({"reasoning": f"{reasoning} ACTION: {decoy}", "action": name})
    assert parse_action(answer, PONG) == parse.ParsedAction(PONG.index(name), "json")


def test_json_scanning_is_bounded():
    """Only the first few "{" are tried as JSON starts, so a flood of them costs little; the answer
    is then still read by the ACTION-line rule."""
    text = "{" * 100_000 + '{"action": "LEFT"}'
    assert parse_action(text, PONG) == parse.ParsedAction(3, "action_line")


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
