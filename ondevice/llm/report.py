"""A generation's report: ``Report`` (the fields of ``--json``), how a finished generation
fills it (``build_report``), and its summary for people (``format_report``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ondevice.common.budget import BUDGET_TOLERANCE

if TYPE_CHECKING:
    from hw import PowerMeter
    from ondevice.llm._edge_session import EdgeSessions
    from ondevice.llm._output import Output
    from ondevice.llm._round import Rounds
    from ondevice.llm.gelato import Budget


@dataclass(slots=True, kw_only=True)
class Report:
    """What ``--json`` prints. Times in seconds unless the key says ms; energy in joules."""

    text: str
    tokens: list[int]
    n_tokens: int
    prompt_tokens: int
    policy: str
    policy_settings: dict[str, Any]
    edge: str | None
    edges: list[str]
    degraded: bool
    degraded_at_token: int | None
    degraded_reason: str | None  # why the draft finished alone, and what would fix it
    rejected_edges: list[dict[str, str]]  # edges discovery found but could not use, and why
    segments: list[dict[str, Any]]  # who produced tokens [from_token, to_token): an edge URL or
    # "draft" (the draft model alone)
    stop_reason: str  # "max_tokens" | "eos" | "context" | "interrupted"
    elapsed_s: float
    tokens_per_s: float
    rounds: int
    drafted: int
    accepted: int
    acceptance: float | None  # accepted / drafted
    mean_drafted: float | None
    mean_draft_ms: float | None
    mean_verify_ms: float | None
    mean_rtt_ms: float | None
    overhead_ms_per_round: float | None  # round time not spent drafting or verifying
    energy_j: float | None  # None when the meter gave no reading in the window
    energy_source: str  # "measured" | "modelled" | "none" (see energy_note)
    energy_note: str | None  # why there is no measurement, when there is none
    j_per_token: float | None
    mean_power_w: float | None
    budget_w: float | None  # the long-term power budget, if any
    budget_j_per_token: float | None  # or the energy-per-token budget
    budget_met: bool | None  # mean power (or J/token) within 3 % of the budget
    meter: str
    meter_coverage: float  # fraction of the window covered by real samples
    window_monotonic_s: tuple[float, float]  # generation window, time.monotonic() seconds
    temperature: float
    seed: int
    draft_limit: int | None = None  # the edge's max drafted tokens per round, when it bounds us
    errors: list[str] = field(default_factory=list)
    # The policy's state (``describe()``) when this prompt started; ``policy_settings`` is the
    # state at its end. A long-lived policy (a Device, ``ondevice serve``) starts a prompt
    # where the previous one ended.
    policy_settings_start: dict[str, Any] = field(default_factory=dict)
    meter_started_monotonic_s: float | None = None  # when the meter began sampling
    edge_connects: int = 0  # edge sockets this prompt opened (0 when it reused a kept one)
    # With a stop string: the committed tokens up to the one that completed it (what the
    # text holds and an API's usage counts); None without a stop string hit.
    returned_tokens: int | None = None
    # At temperature 0: committed tokens the edge chose over a runner-up within TIE_GAP
    # logits (``ondevice.common.speculative``), where the batch shape of llama.cpp's decode may
    # flip the greedy choice; None when sampling or when no edge counted.
    near_ties: int | None = None
    ahead_drafted: int = 0  # tokens drafted ahead while rounds were in flight
    ahead_hits: int = 0  # rounds whose tokens drafted ahead headed the next round
    # Each time the generation left an edge it had a session on (or that refused it as
    # draining) for another: {"from", "to" (an edge URL, "draft", or None at the end),
    # "at_token", "reason"}. A drained edge's move is no failure (``degraded`` stays false).
    moves: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_report(*, out: Output, rounds: Rounds, sessions: EdgeSessions, meter: PowerMeter,
                 window: tuple[float, float], prompt_tokens: int, temperature: float,
                 seed: int, policy_start: dict[str, Any], edge_connects: int) -> Report:
    """The report of a finished generation from what its parts recorded: the committed
    ``out``put, the ``rounds`` (their tally), the edge ``sessions``, and the ``meter`` over
    the generation's ``window`` (monotonic seconds)."""
    t0, t1 = window
    elapsed = max(t1 - t0, 1e-9)
    n_out = out.n
    coverage = meter.coverage(t0, t1)
    energy, source, note = _energy(meter, t0, t1, coverage)
    policy, tot = rounds.policy, rounds.tally
    budget: Budget | None = getattr(policy, "budget", None)
    r = tot.rounds

    def per_round(x: float, scale: float = 1e3) -> float | None:
        return x / r * scale if r else None

    return Report(
        text=out.model.detokenize(out.stream.out),
        tokens=list(out.stream.out),
        n_tokens=n_out,
        prompt_tokens=prompt_tokens,
        policy=policy.name,
        policy_settings=policy.describe(),
        edge=sessions.edges_used[-1] if sessions.edges_used else None,
        edges=list(sessions.edges_used),
        degraded=sessions.degraded,
        degraded_at_token=sessions.degraded_at,
        degraded_reason=sessions.degraded_reason,
        rejected_edges=sessions.rejected,
        segments=sessions.segments,
        stop_reason=out.stop_reason,
        elapsed_s=elapsed,
        tokens_per_s=n_out / elapsed,
        rounds=r,
        drafted=tot.drafted,
        accepted=tot.accepted,
        acceptance=tot.accepted / tot.drafted if tot.drafted else None,
        mean_drafted=tot.drafted / r if r else None,
        mean_draft_ms=per_round(tot.draft_s),
        mean_verify_ms=per_round(tot.verify_s),  # the stretches' edge compute included
        mean_rtt_ms=per_round(tot.rtt_s),
        overhead_ms_per_round=per_round(rounds.overhead_s),
        energy_j=energy,
        energy_source=source,
        energy_note=note,
        j_per_token=energy / n_out if energy is not None and n_out else None,
        mean_power_w=energy / elapsed if energy is not None else None,
        budget_w=budget.power_w if budget is not None else None,
        budget_j_per_token=budget.j_per_token if budget is not None else None,
        budget_met=_budget_met(budget, energy, elapsed, n_out),
        meter=meter.kind,
        meter_coverage=coverage,
        window_monotonic_s=(t0, t1),
        temperature=temperature,
        seed=seed,
        draft_limit=rounds.draft_limit,
        errors=sessions.errors,
        policy_settings_start=policy_start,
        meter_started_monotonic_s=meter.started_t_s,
        ahead_drafted=tot.ahead,
        ahead_hits=tot.ahead_hits,
        near_ties=rounds.near_ties,
        edge_connects=edge_connects,
        moves=sessions.moves,
    )


def _energy(meter: PowerMeter, t0: float, t1: float, coverage: float
            ) -> tuple[float | None, str, str | None]:
    """(joules, ``energy_source``, ``energy_note``) of the window [t0, t1]: measured or
    modelled, or none with the reason when a measuring meter covered none of it (a 0 J
    extrapolated from no reading would read as a result)."""
    if meter.measured and coverage <= 0.0:
        return None, "none", (f"meter {meter.kind} {meter.describe()} gave no reading during "
                              f"the generation ({meter.last_error or 'no samples'})")
    return meter.energy_j(t0, t1), "measured" if meter.measured else "modelled", None


def _budget_met(budget: Budget | None, energy_j: float | None, elapsed_s: float,
                n_tokens: int) -> bool | None:
    """Whether the generation held its policy's budget (``BUDGET_TOLERANCE``): mean power,
    else energy per token; None without a budget or a measurement (or tokens, per token)."""
    if budget is None or energy_j is None:
        return None
    if budget.power_w is not None:
        return energy_j / elapsed_s <= budget.power_w * (1 + BUDGET_TOLERANCE)
    if budget.j_per_token is not None and n_tokens:
        return energy_j / n_tokens <= budget.j_per_token * (1 + BUDGET_TOLERANCE)
    return None


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
        *(f"moved         {m['from']} -> {m['to'] or '-'} at token {m['at_token']}"
          f" ({m['reason']})" for m in report.get("moves") or ()),
        f"tokens        {report['n_tokens']} in {report['elapsed_s']:.2f} s"
        f" = {report['tokens_per_s']:.1f} tokens/s ({report['stop_reason']})"
        + (f", {report['near_ties']} near-tie(s): greedy there may differ between policies"
           if report.get("near_ties") else ""),
        f"rounds        {report['rounds']}, mean drafted {f(report['mean_drafted'], '.2f')},"
        f" acceptance {f(report['acceptance'], '.3f')}"
        + (f", drafted ahead {report['ahead_drafted']} ({report['ahead_hits']} rounds hit)"
           if report.get("ahead_drafted") else ""),
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
