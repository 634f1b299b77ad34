"""The human-readable summary of a generation report (the fields of ``--json``)."""

from __future__ import annotations

from typing import Any


def format_report(report: dict[str, Any]) -> str:
    """Human-readable summary of a generation report."""

    def f(x: Any, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    settings = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in (report["policy_settings"] or {}).items()
        if isinstance(v, (int, float, str)) and not isinstance(v, bool)
    )
    lines = [
        f"policy        {report['policy']} {settings}".rstrip(),
        f"edge          {report['edge'] or '-'}" + ("  (DEGRADED: finished on the draft alone"
                                                   f" from token {report['degraded_at_token']})"
                                                   if report["degraded"] else ""),
        *([f"degraded      {report['degraded_reason']}"]
          if report.get("degraded_reason") else []),
        f"tokens        {report['n_tokens']} in {report['elapsed_s']:.2f} s"
        f" = {report['tokens_per_s']:.1f} tokens/s ({report['stop_reason']})",
        f"rounds        {report['rounds']}, mean drafted {f(report['mean_drafted'], '.2f')},"
        f" acceptance {f(report['acceptance'], '.3f')}",
        f"per round     draft {f(report['mean_draft_ms'], '.1f')} ms, verify"
        f" {f(report['mean_verify_ms'], '.1f')} ms, rtt {f(report['mean_rtt_ms'], '.1f')} ms,"
        f" overhead {f(report['overhead_ms_per_round'], '.2f')} ms",
        *([f"budget        {report['budget_w']} W / {report['budget_j_per_token']} J/token:"
           f" {'met' if report['budget_met'] else 'NOT met'}"]
          if report.get("budget_met") is not None else []),
        (f"energy        {report['energy_j']:.3f} J {report['energy_source']}"
         f" ({report['meter']}), {f(report['j_per_token'], '.4f')} J/token,"
         f" {f(report['mean_power_w'], '.2f')} W, coverage {report['meter_coverage']:.0%}"
         if report["energy_j"] is not None else
         f"energy        none: {report.get('energy_note') or 'no measurement'}"),
    ]
    return "\n".join(lines)
