"""Example 4: the three prompt styles (basic, chain-of-thought, expert) and a JSON answer format.

python examples/04_prompt_styles.py --model openai:gpt-4o-mini
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from _common import example_args

from atari_vlm import AtariVLMEnvironment
from atari_vlm.runner import run_play
from atari_vlm.spec import RunSpec


def main() -> None:
    args = example_args(__doc__, steps=5)
    env = AtariVLMEnvironment("SpaceInvaders")
    for style in ("basic", "cot", "expert"):
        print(f"----- {style} -----\n{env.get_vlm_prompt(style)}")
    env.close()
    with tempfile.TemporaryDirectory() as tmp:
        for style in ("basic", "cot", "expert"):
            spec = RunSpec.build(
                game="SpaceInvaders",
                model=args.model,
                prompt=style,
                answer_format="json" if style == "cot" else "line",
                max_steps=args.steps,
                video=False,
            )
            summary = run_play(spec, Path(args.out or tmp) / style)
            data = summary.to_dict()
            unparsed = f"{data['unparsed']}/{data['decisions']}"
            print(f"{style:>6s}: return {data['mean_return']:g}, unparsable answers {unparsed}")


if __name__ == "__main__":
    main()
