"""``train`` writes report.html at every evaluation: the learning curve, each evaluation beside the
random agent on the same seeds, what training and evaluation cost, the viewer of training episodes."""

from __future__ import annotations

import json
import re

import pytest

from atari_vlm.models.base import Completion, Request, Usage
from atari_vlm.rundir import read_jsonl
from atari_vlm.training import VLMTrainer

pytest.importorskip("matplotlib", reason='plots need matplotlib: pip install "atari-vlm[report]"')

COST = 0.00125  # what the scripted model says each call cost


class PricedVLM:
    """Answers FIRE at a known price, and records when report.html was there at each call."""

    name = "priced"

    def __init__(self, report) -> None:
        self.report = report
        self.seen: list[bool] = []

    async def generate(self, request: Request) -> Completion:
        self.seen.append(self.report.is_file())
        return Completion("ACTION: FIRE", Usage(100, 4), latency_s=0.001, model=self.name, cost_usd=COST)

    async def aclose(self) -> None:
        pass


def _cells(page: str, table: str) -> list[list[str]]:
    body = page.split(f"id='{table}'")[1].split("</table>")[0]
    return [re.findall(r"<td>(.*?)</td>", row) for row in body.split("<tr>")[2:]]


def test_train_writes_the_report_at_each_evaluation(tmp_path):
    out = tmp_path / "train"
    vlm = PricedVLM(out / "report.html")
    trainer = VLMTrainer(
        "Pong-v5",
        vlm,
        "basic",
        False,
        out_dir=out,
        eval_every=2,
        eval_seeds=(7, 8),
        max_steps=3,
        env_options={"resize_shape": (32, 32)},
    )
    result = trainer.train(4)
    # The first evaluation (at episode 0) plays before any training: the report is there for training.
    assert vlm.seen[0] is False and all(vlm.seen[6:])
    page = (out / "report.html").read_text()
    rows = _cells(page, "evaluations")
    assert [r[0] for r in rows] == ["0", "2", "4"]
    for row, point in zip(rows, result.curve, strict=True):
        assert float(row[1]) == pytest.approx(point["eval_mean_return"], abs=0.005)
        assert float(row[3]) == pytest.approx(point["random_mean_return"])
        assert float(row[4]) == pytest.approx(point["eval_mean_return"] - point["random_mean_return"])
    train_calls = len(read_jsonl(out / "steps.jsonl"))
    eval_calls = sum(e["decisions"] for e in read_jsonl(out / "evaluations.jsonl"))
    assert train_calls == 12 and eval_calls == 18  # 4 x 3 decisions; 3 evaluations x 2 seeds x 3
    assert f"<span>training cost</span><b>${train_calls * COST:,.4f}</b>" in page
    assert f"<span>evaluation cost</span><b>${eval_calls * COST:,.4f}</b>" in page
    assert f"<span>cost per training episode</span><b>${3 * COST:,.5f}</b>" in page
    assert 'alt="learning curve"' in page
    data = json.loads(re.search(r'id="run-data">(.*?)</script>', page, re.S).group(1))
    sent = data["columns"].index("sent")
    steps = [s for e in data["episodes"] for s in e["steps"]]
    assert len(steps) == 12 and all(s[sent] is not None for s in steps)  # the viewer shows each request
