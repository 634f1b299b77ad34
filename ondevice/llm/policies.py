"""Drafting policies: how many tokens the device drafts per round, and whether to use the edge.

A policy is a small state object with no I/O. The generation loop asks it, every round, for a
budget (``round_budget``), asks it after every drafted token whether to draft one more
(``keep_drafting``, the per-token inner loop), and tells it what happened (``observe``). The
transport never looks inside a policy, so GELATO and AdaEDL plug in here without touching it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Literal

from ondevice.llm import gelato
from ondevice.llm.acceptance import (
    BinnedAcceptance,
    LogisticAcceptance,
    PrequentialModel,
    TokenFeatures,
)

Mode = Literal["speculative", "device-only", "edge-only"]


@dataclass(frozen=True, slots=True)
class RoundStats:
    """What one draft-verify round did. Times in seconds, energy in joules."""

    drafted: int
    accepted: int
    produced: int  # tokens committed by the round (accepted + 1, less any cut at the end)
    draft_s: float
    rtt_s: float  # send of the round frame to receipt of the verdict
    verify_s: float  # the edge's batched target evaluation, as it reports
    round_s: float  # whole round, wall clock
    energy_j: float  # device energy over the round (from the meter)
    draft_energy_j: float = 0.0  # of which while drafting
    entropies: list[float] = field(default_factory=list)  # per drafted token, nats (if asked)
    features: list[TokenFeatures] = field(default_factory=list)  # per drafted token (if asked)
    # Committed tokens the draft evaluated at the round's start beyond the one it drafts from
    # (0 or 1 after a drafted round; more after rounds that drafted nothing, or the prompt):
    # that catch-up is in draft_s but is not the cost of the tokens drafted.
    catchup_tokens: int = 0
    # The edge's load, as its verdict reports it (None from an edge that does not): time the
    # round waited for a batch, and the tokens of the batched decode that verified it.
    queue_s: float | None = None
    batch_tokens: int | None = None
    # The edge's advice to stream (``advise`` in its verdict; None from an edge that does not
    # give it): it is the fleet's bottleneck and drafting costs it more per token.
    edge_advice: bool | None = None
    # Drafting ahead: ``predrafted`` of this round's drafted tokens were drafted during the
    # previous round's flight (no draft time now); ``ahead`` tokens were drafted during this
    # round's flight, taking ``ahead_s`` and ``ahead_energy_j`` of its wait, and
    # ``ahead_hit`` says whether they head the next round (every drafted token accepted and
    # the edge's own next token equal to the first of them) or were dropped.
    predrafted: int = 0
    ahead: int = 0
    ahead_hit: bool = False
    ahead_s: float = 0.0
    ahead_energy_j: float = 0.0


class Policy(ABC):
    """Decides drafting; ``mode`` says which path of the generation loop runs."""

    name: str = "policy"
    mode: Mode = "speculative"
    needs_entropy: bool = False  # whether keep_drafting wants the draft's entropy
    # whether keep_drafting also wants each token's TokenFeatures, as a third argument
    needs_features: bool = False

    @abstractmethod
    def round_budget(self) -> int:
        """Most tokens to draft this round (the loop also caps it by what is left to generate)."""

    def keep_drafting(self, drafted: int, entropy_nats: float | None) -> bool:
        """After ``drafted`` tokens this round (the last with this entropy), draft another?"""
        return True

    def observe(self, stats: RoundStats) -> None:  # noqa: B027 - optional hook
        """Learn from a finished round (default: nothing to learn)."""

    def stream_tokens(self) -> int:
        """Before a round: let the edge generate this many tokens alone first (0: draft)."""
        return 0

    def observe_stream(self, tokens: int, time_s: float, energy_j: float,  # noqa: B027
                       edge_advice: bool | None = None) -> None:
        """Learn from a streamed stretch (``tokens`` the edge generated alone; the edge's
        advice to stream in its last ``tokens`` frame, None if it gave none)."""

    def ahead_tokens(self, drafted: int) -> int:
        """After drafting a round of ``drafted`` tokens, before it is sent: draft up to this
        many more while it is in flight, on the bet that all of it is accepted (0: do not)."""
        return 0

    def describe(self) -> dict[str, object]:
        """Settings to put in the report."""
        return {}


class FixedPolicy(Policy):
    """Draft exactly ``gamma`` tokens per round (distributed SD as in DSSD)."""

    name = "fixed"

    def __init__(self, gamma: int, *, ahead: int = 0) -> None:
        if gamma < 1:
            raise ValueError(f"gamma must be >= 1, got {gamma}")
        if ahead < 0:
            raise ValueError(f"ahead must be >= 0, got {ahead}")
        self.gamma = gamma
        self.ahead = ahead  # tokens drafted ahead of every round in flight

    def round_budget(self) -> int:
        return self.gamma

    def ahead_tokens(self, drafted: int) -> int:
        return self.ahead if drafted else 0

    def describe(self) -> dict[str, object]:
        return {"gamma": self.gamma, **({"ahead": self.ahead} if self.ahead else {})}


class DeviceOnlyPolicy(Policy):
    """The draft model generates alone; the edge is never contacted."""

    name = "device-only"
    mode: Mode = "device-only"

    def round_budget(self) -> int:
        return 0


class EdgeOnlyPolicy(Policy):
    """The edge's target generates alone and streams tokens back."""

    name = "edge-only"
    mode: Mode = "edge-only"

    def round_budget(self) -> int:
        return 0


class AdaEdlPolicy(Policy):
    """AdaEDL: stop drafting once the entropy bound 1 - sqrt(c H) drops below ``threshold``;
    no energy control. Capped at ``cap`` tokens per round."""

    name = "adaedl"
    needs_entropy = True

    def __init__(self, *, threshold: float = 0.5, c: float = gelato.ADAEDL_C, cap: int = 16):
        self.threshold, self.c, self.cap = threshold, c, cap

    def round_budget(self) -> int:
        return self.cap

    def keep_drafting(self, drafted: int, entropy_nats: float | None) -> bool:
        assert entropy_nats is not None
        return gelato.adaedl_bound(entropy_nats, self.c) >= self.threshold

    def describe(self) -> dict[str, object]:
        return {"threshold": self.threshold, "c": self.c, "cap": self.cap}


class HfHeuristicPolicy(Policy):
    """Hugging Face's assisted-generation schedule: +2 after a fully accepted round, else -1."""

    name = "hf-heuristic"

    def __init__(self, *, start: int = 4, cap: int = 16) -> None:
        self.gamma, self.cap = start, cap
        self._sum = 0
        self._rounds = 0

    def round_budget(self) -> int:
        return self.gamma

    def observe(self, stats: RoundStats) -> None:
        if stats.drafted and stats.accepted == stats.drafted:
            self.gamma = min(self.gamma + 2, self.cap)
        elif stats.drafted:
            self.gamma = max(self.gamma - 1, 1)
        self._sum += stats.drafted
        self._rounds += 1

    def describe(self) -> dict[str, object]:
        return {"final_gamma": self.gamma, "cap": self.cap}


DEFAULT_V = 2.0  # J per token: the queue's price of one expected token (see docs/gelato.md)


class GelatoPolicy(Policy):
    """GELATO: drift-plus-penalty reference budget per round and entropy early exit per token.

    ``budget`` None means no energy constraint (the queue stays empty and the policy maximizes
    tokens per second). Measured round energy drives the virtual queue.
    """

    name = "gelato"
    needs_entropy = True
    needs_features = True

    def __init__(
        self, *, v: float = DEFAULT_V, budget: gelato.Budget | None = None, cap: int = 16,
        estimates: gelato.Estimates | None = None, stream: bool = True, ahead: bool = True,
        acceptance: str = "logistic",
    ) -> None:
        if v <= 0:
            raise ValueError("V must be > 0")
        self.v, self.budget, self.cap = v, budget, cap
        self.stream = stream  # whether the stream action is in the action set
        self.ahead = ahead  # whether drafting ahead is in the action set
        self.ahead_drafted = self.ahead_hits = self.ahead_rounds = 0
        self._judged_now = 0  # keep_drafting calls this round (tokens in the survival)
        self.streamed = 0  # tokens the edge generated alone at this policy's choice
        self._streak = 0  # stretches streamed in a row
        self._probe_every = self.STREAM_PROBE_EVERY  # doubles while probes lose (backoff)
        self._probed = False  # a probe ran since the last stretch
        self._stretch = self.STREAM_TOKENS  # the next stretch's length; doubles while it wins
        self._ready = 0  # tokens drafted ahead that head the next round
        self._q_drafted = 0.0  # the queue when drafting last ran (its realized rate's price)
        self._probe = 0  # drafting rounds left to probe after a streak of stretches
        self.edge_advice = False  # the edge's latest advice to stream (the fleet's best)
        self.advised = 0  # stretches streamed on the edge's advice
        # Realized tokens, energy and time of each action, exponentially weighted: priced at
        # the current queue they give what the action earns per second (renewal reward). The
        # choice between drafting and streaming compares these, so a round model that learns
        # slowly (acceptance, verify slope) cannot lock drafting out; pricing at the queue of
        # now, not of when the action ran, keeps a drained queue from favouring the action
        # that was cheap while it was full.
        self._earned = {"draft": [0.0, 0.0, 0.0], "stream": [0.0, 0.0, 0.0]}
        self._since_stretch = 0
        self.q_j = 0.0
        self.est = estimates or gelato.Estimates()
        # P(accept) of each drafted token: "logistic" on the draft's entropy, top-1
        # probability, top-1 margin, position and running rate (``acceptance.py``), or
        # "bins", the entropy-binned model of the paper's rule.
        if acceptance not in ("logistic", "bins"):
            raise ValueError(f"acceptance must be 'logistic' or 'bins', not {acceptance!r}")
        self.acceptance: PrequentialModel = (LogisticAcceptance() if acceptance == "logistic"
                                             else BinnedAcceptance())
        self._ref = 0
        self._score = 0.0
        self._survival = 1.0
        self._model = self.est.model()
        self.rounds = 0
        self.q_sum = 0.0
        self.ref_sum = 0
        self.energy_j = 0.0
        self.time_s = 0.0
        self.tokens = 0

    WARMUP = (2, 4, 1, 3)  # first rounds' budgets: varied, so verify time vs b is measurable
    EXPLORE_EVERY = 16  # when the optimum is not to draft, still draft one token this often
    STREAM_TOKENS = 64  # a streamed stretch (one request, one RTT), re-decided after each
    STREAM_MAX_TOKENS = 1024  # stretches double up to this while streaming keeps winning
    STREAM_PROBE_EVERY = 4  # stretches in a row before one drafting round re-measures drafting
    STREAM_PROBE_MAX = 64  # ... at most, after probes that did not win drafting back
    STREAM_AFTER_ROUNDS = 8  # drafting rounds measured before streaming is weighed against them
    STREAM_RETRY_ROUNDS = 64  # drafting rounds in a row before streaming is measured again
    STREAM_CONFIDENT_ROUNDS = 64  # before this many rounds, streaming must win by EARLY_MARGIN
    EARLY_MARGIN = 1.25
    PROBE_BUDGET = 4  # a probing round drafts at least this many (less says little of drafting)
    PROBE_ROUNDS = 3  # drafting rounds in a probe

    def stream_tokens(self) -> int:
        """The stream action: a stretch of ``STREAM_TOKENS`` when its ratio beats the best
        drafting budget's (``gelato.should_stream``), else 0; each stretch in a row doubles
        the next (to ``STREAM_MAX_TOKENS``: fewer round trips while streaming stays best).
        Not before ``STREAM_AFTER_ROUNDS``
        drafting rounds were measured; after ``STREAM_PROBE_EVERY`` stretches in a row, a
        probe of ``PROBE_ROUNDS`` drafting rounds of at least ``PROBE_BUDGET`` tokens (if
        drafting could pay at all) keeps the drafting estimates alive; each probe after which
        streaming still wins doubles that interval (to ``STREAM_PROBE_MAX``), so a pair where
        streaming is best pays ever less for probing; drafting winning resets it."""
        # The edge's advice: it is the fleet's bottleneck and a drafted token costs it more
        # than a streamed one, so every device streaming is the fleet's best (a device alone
        # would not find it: while the others draft, its streamed tokens wait behind their
        # rounds). Followed from the first round it comes with, unless the device's energy
        # budget is in debt (a queue above zero): its own comparison then keeps the budget
        # first.
        advised = self.edge_advice and self.q_j <= 0.0
        if not self.stream or self._probe or (self.rounds < self.STREAM_AFTER_ROUNDS
                                              and not advised):
            return 0
        self._model = self.est.model()
        # While drafting is still being learned (its acceptance and costs converge over tens
        # of rounds) streaming must win by a margin; afterwards, by anything.
        margin = 1.0 if self.rounds >= self.STREAM_CONFIDENT_ROUNDS else self.EARLY_MARGIN
        drafted, streamed = self._rate("draft"), self._rate("stream")
        if advised:
            better = True
        elif streamed is None:  # no stretch yet: the round model's prediction decides a first one
            b_best, best = gelato.choose_budget(self._model, self.q_j, self.v, self.budget,
                                                self.cap)
            # Not drafting at all (b* = 0) is streaming with a round trip per token: stream.
            better = b_best == 0 or gelato.stream_score(
                self._model, self.q_j, self.v, self.budget) > (
                margin * best if best > 0 else best)
        elif self._streak == 0 and self._since_stretch >= self.STREAM_RETRY_ROUNDS:
            better = True  # drafting for a while: measure streaming again
        else:
            better = drafted is None or streamed > (margin * drafted if drafted > 0 else drafted)
        if not better:
            self._streak = 0
            self._since_stretch += 1
            self._probe_every, self._probed = self.STREAM_PROBE_EVERY, False
            self._stretch = self.STREAM_TOKENS
            return 0
        if self._probed:  # streaming won again after a probe: probe half as often
            self._probe_every = min(2 * self._probe_every, self.STREAM_PROBE_MAX)
            self._probed = False
        # The queue drained well below where drafting was last measured: drafting's realized
        # rate came from a dearer time (its rounds were cut short by the penalty), so measure
        # it again now rather than after the backed-off interval.
        drained = self._q_drafted > 0.0 and self.q_j < 0.5 * self._q_drafted
        if drained:
            self._probe_every = self.STREAM_PROBE_EVERY
        if (self._streak >= self._probe_every or drained) and self._could_pay():
            self._streak = 0
            self._probe = self.PROBE_ROUNDS
            self._probed = True
            return 0
        if self._streak:  # streaming won again: a longer stretch pays fewer round trips
            self._stretch = min(2 * self._stretch, self.STREAM_MAX_TOKENS)
        self._streak += 1
        self.advised += int(advised)
        self._since_stretch = 0
        return self._stretch

    EARN_DECAY = 0.97  # weight of the past in the realized outcomes of each action

    def _earn(self, action: str, tokens: float, energy_j: float, time_s: float) -> None:
        acc = self._earned[action]
        for i, x in enumerate((tokens, energy_j, time_s)):
            acc[i] = self.EARN_DECAY * acc[i] + x

    def _rate(self, action: str) -> float | None:
        """The action's realized drift-plus-penalty value per second at the current queue."""
        tokens, energy_j, time_s = self._earned[action]
        return self._value(tokens, energy_j, time_s) / time_s if time_s > 0 else None

    def _value(self, tokens: float, energy_j: float, time_s: float) -> float:
        """Drift-plus-penalty value of an action's outcome: V * tokens - Q * (E - C)."""
        allowance = self.budget.allowance_j(time_s, tokens) if self.budget is not None else 0.0
        return self.v * tokens - self.q_j * (energy_j - allowance)

    def observe_stream(self, tokens: int, time_s: float, energy_j: float,
                       edge_advice: bool | None = None) -> None:
        if edge_advice is not None:
            self.edge_advice = edge_advice
        self._earn("stream", tokens, energy_j, time_s)
        self.est.observe_stream(tokens=tokens, time_s=time_s, energy_j=energy_j)
        if self.budget is not None:
            allowance = self.budget.allowance_j(time_s, tokens)
            self.q_j = gelato.queue_update(self.q_j, energy_j, allowance)
        self.streamed += tokens
        self._ready = 0
        self.energy_j += energy_j
        self.time_s += time_s
        self.tokens += tokens

    def round_budget(self) -> int:
        self._model = replace(self.est.model(), free_tokens=self._ready)
        self._ref, self._score = gelato.choose_budget(
            self._model, self.q_j, self.v, self.budget, self.cap
        )
        self._survival = 1.0
        self._judged_now = 0
        if self.rounds < len(self.WARMUP):
            self._ref = self.WARMUP[self.rounds]
            return self._ref
        if self._probe:
            self._probe -= 1
            return max(min(2 * self._ref, self.cap), self.PROBE_BUDGET)
        if self._ref == 0 and self.rounds % self.EXPLORE_EVERY == 0 and self._could_pay():
            return 1  # keep the acceptance and draft-cost estimates alive
        return min(2 * self._ref, self.cap)

    def _could_pay(self) -> bool:
        """Whether drafting would be chosen if every drafted token were accepted (a = A_MAX):
        if not, probing acceptance is pointless, and each probe costs a draft forward plus the
        draft's catch-up on every token committed since its last draft."""
        best = replace(self._model, a=gelato.A_MAX)
        return gelato.choose_budget(best, self.q_j, self.v, self.budget, self.cap)[0] > 0

    @staticmethod
    def _features(j: int, entropy_nats: float, features: TokenFeatures | None) -> TokenFeatures:
        """The token's features; without them (a trace that lacks top-1 and margin) the
        top-1 and margin inputs sit at their centre, 0.5, where they move nothing."""
        return features if features is not None else TokenFeatures(entropy_nats, 0.5, 0.5, j)

    def keep_drafting(self, drafted: int, entropy_nats: float | None,
                      features: TokenFeatures | None = None) -> bool:
        assert entropy_nats is not None
        a = self.acceptance.predict(self._features(drafted - 1, entropy_nats, features))
        self._survival *= a
        self._judged_now = drafted
        free = drafted <= self._model.free_tokens  # drafted ahead: costs nothing now
        return gelato.keep_drafting(
            v=self.v, q_j=self.q_j, score=self._score, survival=self._survival, a_next=a,
            e_draft_j=0.0 if free else self._model.e_draft_j,
            t_draft_s=0.0 if free else self._model.t_draft_s, budget=self.budget,
        )

    def ahead_tokens(self, drafted: int) -> int:
        """Drafting ahead (``gelato.choose_ahead``): the chance of a hit is the round's
        predicted survival (tokens the inner loop did not see at the mean acceptance) times
        the mean acceptance of the next token. ``drafted`` is the round's drafted tokens."""
        if not self.ahead or not drafted:
            return 0
        m = replace(self._model, free_tokens=0)  # this round's wait, all its drafting priced
        unseen = max(drafted - self._judged_now, 0)
        p_hit = self._survival * m.a ** (unseen + 1)
        return gelato.choose_ahead(m, drafted=drafted, p_hit=p_hit, q_j=self.q_j,
                                   score=max(self._score, 0.0), budget=self.budget,
                                   cap=self.cap)

    def observe(self, stats: RoundStats) -> None:
        if stats.edge_advice is not None:
            self.edge_advice = stats.edge_advice
        self._ready = stats.ahead - 1 if stats.ahead_hit else 0
        if stats.ahead:
            self.ahead_rounds += 1
            self.ahead_drafted += stats.ahead
            self.ahead_hits += int(stats.ahead_hit)
        self.est.observe(
            drafted=stats.drafted, accepted=stats.accepted, draft_s=stats.draft_s,
            rtt_s=stats.rtt_s, verify_s=stats.verify_s, round_s=stats.round_s,
            energy_j=stats.energy_j, draft_energy_j=stats.draft_energy_j,
            catchup_tokens=stats.catchup_tokens, queue_s=stats.queue_s,
            batch_tokens=stats.batch_tokens, predrafted=stats.predrafted,
            ahead_s=stats.ahead_s, ahead_energy_j=stats.ahead_energy_j,
        )
        feats = stats.features or [self._features(j, h, None)
                                   for j, h in enumerate(stats.entropies)]
        self.acceptance.observe_round(feats, stats.accepted)
        # A round after a stretch also pays the draft's catch-up on the streamed tokens: that
        # is the stretch's cost, not drafting's, so it is taken out of the round's outcome.
        m = self._model
        catchup_s = (max(stats.draft_s - stats.drafted * m.t_draft_s, 0.0)
                     if stats.catchup_tokens > 1 else 0.0)
        catchup_j = catchup_s * m.e_draft_j / max(m.t_draft_s, 1e-9)
        time_s = max(stats.round_s - catchup_s, 1e-9)
        self._earn("draft", stats.produced, stats.energy_j - catchup_j, time_s)
        self._q_drafted = self.q_j
        if self.budget is not None:
            allowance = self.budget.allowance_j(stats.round_s, stats.produced)
            self.q_j = gelato.queue_update(self.q_j, stats.energy_j, allowance)
        self.rounds += 1
        self.q_sum += self.q_j
        self.ref_sum += self._ref
        self.energy_j += stats.energy_j
        self.time_s += stats.round_s
        self.tokens += stats.produced

    def describe(self) -> dict[str, object]:
        prior_mse, learned_mse = self.acceptance.brier()
        out: dict[str, object] = {
            "V": self.v,
            "cap": self.cap,
            "queue_j": self.q_j,
            "mean_queue_j": self.q_sum / self.rounds if self.rounds else 0.0,
            "mean_reference_budget": self.ref_sum / self.rounds if self.rounds else None,
            "streamed_tokens": self.streamed,
            "stretches_on_edge_advice": self.advised,
            "ahead_rounds": self.ahead_rounds,
            "ahead_drafted": self.ahead_drafted,
            "ahead_hits": self.ahead_hits,
            "acceptance_brier_prior": prior_mse,
            "acceptance_brier_learned": learned_mse,
            "acceptance_calibration": self.acceptance.calibration(),
        }
        if self.budget is not None:
            out["budget"] = {"power_w": self.budget.power_w,
                             "j_per_token": self.budget.j_per_token}
        return out


POLICIES = ("gelato", "fixed", "adaedl", "hf-heuristic", "device-only", "edge-only")


def make_policy(
    name: str, *, gamma: int = 4, v: float = DEFAULT_V, power_budget_w: float | None = None,
    energy_per_token_j: float | None = None, draft_ahead: int | None = None,
) -> Policy:
    """Build a policy by its ``--policy`` name. ``draft_ahead``: None, gelato decides (fixed
    drafts none ahead); 0, never; N > 0, fixed drafts N ahead of every round (gelato: allowed,
    it decides how far). Other policies take no ``draft_ahead`` but None or 0."""
    if draft_ahead is not None and draft_ahead < 0:
        raise ValueError(f"draft_ahead must be >= 0, got {draft_ahead}")
    if draft_ahead and name not in ("gelato", "fixed"):
        raise ValueError("drafting ahead is for the gelato and fixed policies")
    if name == "gelato":
        budget = None
        if power_budget_w is not None or energy_per_token_j is not None:
            budget = gelato.Budget(power_w=power_budget_w, j_per_token=energy_per_token_j)
        return GelatoPolicy(v=v, budget=budget, ahead=draft_ahead != 0)
    if name == "fixed":
        return FixedPolicy(gamma, ahead=draft_ahead or 0)
    if name == "adaedl":
        return AdaEdlPolicy()
    if name == "hf-heuristic":
        return HfHeuristicPolicy()
    if name == "device-only":
        return DeviceOnlyPolicy()
    if name == "edge-only":
        return EdgeOnlyPolicy()
    raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
