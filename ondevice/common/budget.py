"""When an energy budget counts as held: one tolerance for every controller and report.

A budget (mean power W, or energy per token J) is *held* when the long-run average spent is at
most ``BUDGET_TOLERANCE`` above it; spending less always holds it. The generation's report
(``ondevice.llm``), the classifier's summary (``ondevice.dnn``) and the benchmarks' verdicts
(``ondevice.bench``) all judge with this one value.
"""

from __future__ import annotations

BUDGET_TOLERANCE = 0.03  # a budget is held when the long-run average is at most 3 % above it
