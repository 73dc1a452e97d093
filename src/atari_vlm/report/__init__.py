"""What a run looks like to a person: ``report.html`` (summary, plots, a step-by-step episode viewer).

Plots need matplotlib, the optional extra ``report`` (``pip install "atari-vlm[report]"``).
"""

from __future__ import annotations

from atari_vlm.report.html import render_report, write_report

__all__ = ["render_report", "write_report"]
