"""``ondevice classify``'s summary as a user reads it: energy in mJ like the task lines, the
tasks per split as ``raw 449, s2 12`` (not a Python dict), and a budget line that says the
energy budget held and by how much the run spent under it."""

from __future__ import annotations

from ondevice.dnn.classify import TaskRecord, summarize
from ondevice.dnn.run import ClassifyReport, format_summary, format_task


def _task(k: int, split: str, energy_j: float) -> TaskRecord:
    return TaskRecord(
        index=k, label=k % 10, prediction=k % 10, confidence=0.9, entropy_nats=0.2,
        correct=True, split=split, p_ref_w=0.1, share=None, users=None, packets=1,
        bytes_sent=64, fraction=1.0, stop="all-sent", latency_ms=3.0, deadline_met=True,
        head_ms=None, airtime_ms=1.0, energy_j=energy_j, compute_j=energy_j * 0.25,
        radio_j=energy_j * 0.75, predicted_accuracy=0.99, queue_j=0.0)


def _report(spent: float | None) -> ClassifyReport:
    """461 tasks over 1 s; `spent`: the mean power as a fraction of the budget (no budget:
    None)."""
    tasks = [_task(k, "raw", 9.68e-05) for k in range(449)]
    tasks += [_task(449 + k, "s2", 9.68e-05) for k in range(12)]
    mean_w = sum(t.energy_j for t in tasks) / 1.0
    summary = summarize(tasks, elapsed_s=1.0, energy_source="modelled",
                        budget_w=None if spent is None else mean_w / spent,
                        metric="top1-accuracy")
    summary["idle_w"] = 3.3
    return ClassifyReport(policy="enachi", settings={}, model="digits-cnn@1", data="digits",
                          edge="http://127.0.0.1:1", channel="none", meter="sim",
                          tasks=tasks, summary=summary)


def test_summary_uses_mj_and_names_the_splits() -> None:
    rep = _report(spent=None)
    text = format_summary(rep)
    assert "splits raw 449, s2 12" in text
    assert "{" not in text and "'" not in text
    energy = next(line for line in text.splitlines() if line.startswith("energy"))
    assert energy.startswith("energy     0.097 mJ/task (modelled; compute ")
    assert "J/task" not in energy.replace("mJ/task", "") and "e-05" not in energy
    assert "compute 11.156 mJ, radio 33.469 mJ in all" in energy  # 461 x 96.8 uJ x 1/4, 3/4
    # the same unit and digits as the task lines
    assert "   0.097 mJ" in format_task(rep.tasks[0])


def _budget_line(rep: ClassifyReport) -> str:
    return next(x for x in format_summary(rep).splitlines() if x.startswith("budget"))


def test_budget_line_says_held_and_how_far_under() -> None:
    line = _budget_line(_report(spent=0.823))
    assert line.endswith("energy budget held (spent 17.7 % under)"), line
    assert "within 3%" not in line and "NOT" not in line
    line = _budget_line(_report(spent=1.02))
    assert line.endswith("energy budget held (spent 2.0 % over)"), line
    line = _budget_line(_report(spent=1.05))
    assert line.endswith("energy budget NOT held (spent 5.0 % over)"), line


def test_unlabelled_tasks_say_there_is_no_accuracy() -> None:
    tasks = [_task(0, "raw", 1e-4)]
    tasks[0].correct = None
    tasks[0].label = None
    summary = summarize(tasks, elapsed_s=1.0, energy_source="modelled", budget_w=None,
                        metric="none")
    summary["idle_w"] = 3.3
    rep = ClassifyReport(policy="enachi", settings={}, model="digits-cnn@1", data="image",
                         edge=None, channel="none", meter="sim", tasks=tasks, summary=summary)
    line = next(x for x in format_summary(rep).splitlines() if x.startswith("tasks"))
    assert line.startswith("tasks      1  no labels (no accuracy)  deadline"), line
    assert "none -" not in line
