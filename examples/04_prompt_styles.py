"""Example 4: the three prompt styles (basic, chain-of-thought, expert) and a JSON answer format.

python examples/04_prompt_styles.py --model openai:gpt-4o-mini
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from _common import example_args

from atari_vlm import AtariVLMEnvironment
from atari_vlm.runner import PlaySettings, run_play


def main() -> None:
    args = example_args(__doc__, steps=5)
    env = AtariVLMEnvironment("SpaceInvaders")
    for style in ("basic", "cot", "expert"):
        print(f"----- {style} -----\n{env.get_vlm_prompt(style)}")
    env.close()
    with tempfile.TemporaryDirectory() as tmp:
        for style in ("basic", "cot", "expert"):
            summary = run_play(
                PlaySettings(
                    game="SpaceInvaders",
                    out=Path(args.out or tmp) / style,
                    model=args.model,
                    prompt=style,
                    answer_format="json" if style == "cot" else "line",
                    env={"max_steps": args.steps},
                    video=False,
                )
            )
            data = summary.to_dict()
            unparsed = f"{data['unparsed']}/{data['decisions']}"
            print(f"{style:>6s}: return {data['mean_return']:g}, unparsable answers {unparsed}")


if __name__ == "__main__":
    main()
