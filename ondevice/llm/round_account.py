"""How a draft-verify round is counted: once, for the real loop and every simulator. Pure.

Rounds run four ways: for real (``ondevice.llm._round``: a draft model, an edge, a meter), in
the GELATO simulator (``ondevice.bench.gelato_sim``: a recorded trace priced by a cost model)
and in both modes of the fleet benchmark (``ondevice.bench.fleet``: a replayed draft against a
real or a modelled batching edge). Each measures or prices its round its own way and writes it
down as one ``RoundStats``, the policy's observation. What follows from that record is
declared here:

- ``RoundTally.add_round`` checks the round (``check_round``) and adds it to the run's totals:
  rounds, drafted and accepted tokens, committed tokens, time and device energy, the drafting,
  verifying and round-trip time, the tokens drafted ahead and the rounds they headed.
  ``add_stream`` adds a stretch the edge generated alone. It returns the record, so that a
  loop writes ``policy.observe(tally.add_round(RoundStats(...)))``: what the policy learns
  from and what the run reports are the same numbers.
- ``DraftCache`` is what the draft's KV cache lacks between rounds, for the loops that price
  drafting instead of running it (the real ``DraftStream`` keeps its cache itself and measures
  what this models): the committed tokens the next draft first evaluates in one batch
  (``pending``) and the tokens drafted ahead that head the next round (``ready``). From it come
  a round's ``predrafted`` and ``catchup_tokens``; ``sync_s`` prices its first draft
  evaluation, and ``ahead_hits`` says whether the tokens drafted ahead were a hit.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ondevice.llm._policy import RoundStats


def check_round(stats: RoundStats) -> None:
    """Raise ValueError unless ``stats`` describes a possible round: 0 <= accepted <= drafted,
    0 <= produced <= accepted + 1 (a round commits its accepted tokens and the edge's own,
    less any cut at an end-of-generation token or the budget), 0 <= predrafted <= drafted,
    ahead >= 0, and a hit only where something was drafted ahead and every drafted token was
    accepted."""
    d, a = stats.drafted, stats.accepted
    problem = None
    if not 0 <= a <= d:
        problem = f"accepted {a} of {d} drafted"
    elif not 0 <= stats.produced <= a + 1:
        problem = f"produced {stats.produced} after accepting {a}"
    elif not 0 <= stats.predrafted <= d:
        problem = f"predrafted {stats.predrafted} of {d} drafted"
    elif stats.ahead < 0:
        problem = f"drafted {stats.ahead} ahead"
    elif stats.ahead_hit and not (stats.ahead > 0 and d > 0 and a == d):
        problem = f"a hit with {stats.ahead} drafted ahead and {a} of {d} accepted"
    if problem is not None:
        raise ValueError(f"impossible round: {problem}")


@dataclass(slots=True)
class RoundTally:
    """What a run's rounds and streamed stretches add up to. Seconds, joules (device)."""

    tokens: int = 0  # committed: the rounds' produced tokens and the stretches' tokens
    time_s: float = 0.0  # the rounds' round_s and the stretches' time
    energy_j: float = 0.0  # device energy of the rounds and the stretches
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    draft_s: float = 0.0
    verify_s: float = 0.0  # the edge's compute: the rounds' verify and the stretches'
    rtt_s: float = 0.0
    ahead: int = 0  # tokens drafted ahead while rounds were in flight
    ahead_hits: int = 0  # rounds whose tokens drafted ahead headed the next round

    def add_round(self, stats: RoundStats) -> RoundStats:
        """Count one finished round (ValueError if ``check_round`` refuses it); returns
        ``stats``, the policy's observation of it."""
        check_round(stats)
        self.tokens += stats.produced
        self.time_s += stats.round_s
        self.energy_j += stats.energy_j
        self.rounds += 1
        self.drafted += stats.drafted
        self.accepted += stats.accepted
        self.draft_s += stats.draft_s
        self.verify_s += stats.verify_s
        self.rtt_s += stats.rtt_s
        self.ahead += stats.ahead
        self.ahead_hits += int(stats.ahead_hit)
        return stats

    def add(self, other: RoundTally) -> None:
        """Add another run's totals (a prompt's to a benchmark's, say)."""
        for name in _TALLY_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def add_stream(self, tokens: int, time_s: float, energy_j: float,
                   verify_s: float = 0.0) -> None:
        """Count a stretch of ``tokens`` the edge generated alone over ``time_s`` seconds,
        ``energy_j`` joules on the device and ``verify_s`` of the edge's compute."""
        if tokens < 0:
            raise ValueError(f"a stretch of {tokens} tokens")
        self.tokens += tokens
        self.time_s += time_s
        self.energy_j += energy_j
        self.verify_s += verify_s


_TALLY_FIELDS = tuple(f.name for f in fields(RoundTally))


@dataclass(slots=True)
class DraftCache:
    """What the draft's KV cache lacks between rounds, as ``DraftStream`` keeps it: a draft
    first evaluates, in one batch, the committed tokens its cache lacks; after a round that
    accepted everything that is the last drafted token and the edge's own (2), after a
    rejection the edge's token alone (1: the cache is trimmed to the accepted prefix), after
    a round that drafted nothing one more than before (the catch-up waits for a draft).
    Tokens drafted ahead that hit head the next round, the cache holding everything before
    them. A prompt starts with one pending token, the prompt's last (its prefill is not
    counted).

    One approximation: after a full accept whose last drafted token the real draft has
    already evaluated (it drafted ahead and lost the bet, or the round drafted fewer tokens
    than were ready), the real draft lacks one token, not two; the simulated benchmarks'
    numbers rest on this model as it is (tests/ondevice/llm/test_round_account.py)."""

    pending: int = 1  # committed tokens the next draft evaluates first, in one batch
    ready: int = 0  # tokens drafted ahead that head the next round

    def predrafted(self, drafted: int) -> int:
        """Of a round's ``drafted`` tokens, those drafted ahead during the last round."""
        return min(self.ready, drafted)

    def catchup_tokens(self, drafted: int, predrafted: int) -> int:
        """``RoundStats.catchup_tokens``: committed tokens the round's first draft evaluation
        takes beyond the one it drafts from: 0 when nothing is drafted (the catch-up waits)
        or the round starts on tokens drafted ahead (the cache holds everything)."""
        return self.pending - 1 if drafted and not predrafted else 0

    def after_round(self, stats: RoundStats) -> None:
        """The cache once ``stats``'s round is committed."""
        self.pending, self.ready = cache_after_round(
            self.pending, stats.drafted, stats.accepted, stats.ahead, stats.ahead_hit)

    def after_stream(self, tokens: int) -> None:
        """The cache once a stretch of ``tokens`` streamed by the edge is committed: the draft
        has seen none of them, and whatever was drafted ahead is dropped."""
        self.pending += tokens
        self.ready = 0


def cache_after_round(pending: int, drafted: int, accepted: int, ahead: int, hit: bool
                      ) -> tuple[int, int]:
    """(pending, ready) after a round (``DraftCache``), from those before it: a hit leaves
    ``ahead - 1`` tokens ready (the first drafted ahead is the edge's own token, committed)
    and one pending."""
    if hit:
        return 1, ahead - 1
    if drafted == 0:
        return pending + 1, 0
    return (2 if accepted == drafted else 1), 0


def ahead_hits(ahead: int, drafted: int, accepted: int, bet_accepted: bool) -> bool:
    """Whether tokens drafted ahead during a round head the next one: some were drafted,
    every drafted token was accepted, and the edge's own next token is the first of them
    (``bet_accepted``; on a trace, the position after the drafted ones is accepted)."""
    return ahead > 0 and drafted > 0 and accepted == drafted and bet_accepted


def sync_s(draft_s: float, drafted: int, predrafted: int, draft_ms_per_token: float) -> float:
    """``RoundStats.sync_s`` of a priced round: of its ``draft_s``, the first draft evaluation
    (the catch-up batch and the first fresh token), when each further fresh token takes
    ``draft_ms_per_token``; 0.0 when nothing fresh was drafted. What ``DraftStream``
    measures apart (``Drafted.sync_s``)."""
    fresh = drafted - predrafted
    return draft_s - (fresh - 1) * draft_ms_per_token / 1e3 if fresh > 0 else 0.0


__all__ = ["DraftCache", "RoundTally", "ahead_hits", "cache_after_round", "check_round",
           "sync_s"]
