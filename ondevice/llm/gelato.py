"""GELATO's math: drift-plus-penalty drafting budget and entropy-driven early exit. No I/O.

Renewal-reward form of Lyapunov drift-plus-penalty (Neely, "Stochastic Network Optimization",
ch. 7), per round r of random length T_r:

- virtual energy queue  Q_{r+1} = max(Q_r + E_r - C_r, 0), with the allowance
  C_r = P_budget * T_r (a power budget, W) or eps * n_r (an energy-per-token budget, J/token);
- outer loop: the reference budget b_r maximizes the ratio
  [V * N(b) - Q_r * (E(b) - C(b))] / T(b), with N(b) = (1 - a^(b+1)) / (1 - a) the expected
  tokens a round of b drafted tokens produces at per-token acceptance a,
  T(b) = b * t_draft + t_net + t_queue + t_verify(b) and
  E(b) = b * e_draft + (T(b) - b t_draft) * p_wait;
- inner loop: after drafting token j with entropy H_j, with S_j the probability that every token
  drafted so far is accepted, draft one more only while
  V * S_j * a(H_j) - Q_r * e_draft - score_r * t_draft > 0, where score_r is the outer loop's
  optimal ratio (the value of the time a token costs) and a(H) the learned acceptance model.

The edge's load enters T(b) twice, from what its verdicts report: t_queue, the time a round
waits for a batch, and t_verify(b) = v0 + v1 * (b + 1 + others), a linear fit of the verify time
against the tokens in the batched decode (the round's own b + 1 and ``others``, the other
devices' tokens in the same decode, both EWMAs). When devices join, both grow, the fixed cost of
a round grows, and b* moves; the queue still charges the measured energy of waiting.

A second action (beyond the paper, so that GELATO never loses to letting the edge generate):
stream, i.e. the edge's target generates the next L tokens alone and streams them. Its ratio
per token is [V - Q (e_stream - c_stream)] / t_stream with t_stream and e_stream the measured
time and device energy per streamed token (radio receive and waiting, no drafting); the
controller streams while that ratio beats the best drafting budget's, re-deciding after every
stretch of L tokens (``should_stream``). In a fleet the edge may advise streaming (it is the
bottleneck and a verified position costs it more per produced token than a streamed one,
``edge_server/_advice.py``): ``GelatoPolicy`` then streams unless its energy queue is above
zero, because no device reaches that fleet-wide optimum by its own comparison.

A third action, drafting ahead (SpecEdge's proactive drafting, PipeSpec): after sending a round
of b tokens the device drafts k more while the round is in flight, betting that all b are
accepted and the edge's own next token is the draft's first extra one (probability p_hit, the
round's survival times a). On a hit the next round starts with k - 1 tokens already drafted,
saving (k - 1) t_draft of its time; always, the k tokens draw drafting instead of waiting power.
Valued in the same units as the outer loop, score * p_hit (k - 1) t_draft - Q * k (e_draft -
t_draft p_wait) (under a power budget the saved time also shrinks the allowance), and k is at
most what fits in the round's wait (``choose_ahead``).

Units: seconds, joules, watts. V converts tokens into the queue's joules (J per token); larger V
weighs throughput more against the energy budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ondevice.common.estimators import Ewma, LinearFit

# AdaEDL (Agrawal et al., 2024): acceptance lower bound 1 - sqrt(c * H), H the draft's entropy
# in nats. c = 0.4 makes the bound cross 0.5 at H ~ 0.6 nats.
ADAEDL_C = 0.4
A_MIN, A_MAX = 0.02, 0.98  # keep acceptance estimates off 0 and 1 (N(b) and logs stay finite)


def expected_tokens(a: float, b: int) -> float:
    """N(b) = 1 + a + ... + a^b: expected tokens of a round that drafts b tokens (+1 bonus)."""
    a = min(max(a, 0.0), 1.0)
    if a >= 1.0 - 1e-12:
        return float(b + 1)
    return (1.0 - a ** (b + 1)) / (1.0 - a)


def adaedl_bound(entropy_nats: float, c: float = ADAEDL_C) -> float:
    """AdaEDL's lower bound on the acceptance probability of a token drafted at entropy H."""
    return 1.0 - math.sqrt(max(c * entropy_nats, 0.0))


def queue_update(q_j: float, energy_j: float, allowance_j: float) -> float:
    """Q_{r+1} = max(Q_r + E_r - C_r, 0)."""
    return max(q_j + energy_j - allowance_j, 0.0)


class AcceptanceModel:
    """a(H): probability that a token drafted at entropy H (nats) is accepted, learned online.

    Binned over entropy; each bin starts at the AdaEDL bound with a prior worth
    ``prior_count`` observations and moves to the observed accept rate as outcomes arrive.
    """

    def __init__(
        self, *, h_max: float = 8.0, bins: int = 16, prior_count: float = 4.0, c: float = ADAEDL_C
    ) -> None:
        self.edges = np.linspace(0.0, h_max, bins + 1)  # [bins + 1]
        centers = 0.5 * (self.edges[:-1] + self.edges[1:])
        prior = np.clip([adaedl_bound(h, c) for h in centers], A_MIN, A_MAX)
        self.accepts = prior * prior_count  # [bins] pseudo-counts
        self.trials = np.full(bins, prior_count)  # [bins]
        self.prior = prior.copy()
        self.seen = np.zeros(bins)  # [bins] real observations
        self.seen_accepts = np.zeros(bins)

    def _bin(self, h: float) -> int:
        return int(min(max(np.searchsorted(self.edges, h, side="right") - 1, 0),
                       len(self.trials) - 1))

    def predict(self, h: float) -> float:
        i = self._bin(h)
        return float(np.clip(self.accepts[i] / self.trials[i], A_MIN, A_MAX))

    def observe(self, h: float, accepted: bool) -> None:
        i = self._bin(h)
        self.trials[i] += 1.0
        self.accepts[i] += 1.0 if accepted else 0.0
        self.seen[i] += 1.0
        self.seen_accepts[i] += 1.0 if accepted else 0.0

    def observe_round(self, entropies: list[float], n_accepted: int) -> None:
        """Tokens before the first rejection were accepted, the first rejected one was not;
        tokens after it were never judged and teach nothing."""
        for j, h in enumerate(entropies[: n_accepted + 1]):
            self.observe(h, j < n_accepted)

    def calibration(self) -> list[dict[str, float]]:
        """Per bin that saw outcomes: entropy range, AdaEDL prior, learned estimate, observed
        accept rate and count. A calibrated model has estimate ~ observed where n is large."""
        out = []
        for i in np.flatnonzero(self.seen):
            out.append({
                "h_lo": float(self.edges[i]), "h_hi": float(self.edges[i + 1]),
                "prior": float(self.prior[i]),
                "estimate": float(self.accepts[i] / self.trials[i]),
                "observed": float(self.seen_accepts[i] / self.seen[i]),
                "n": int(self.seen[i]),
            })
        return out

    def brier(self) -> tuple[float, float]:
        """(mean squared error of the AdaEDL prior, of the learned estimate) over observed
        outcomes, per token: lower is better calibrated."""
        n = self.seen.sum()
        if n == 0:
            return math.nan, math.nan
        est = self.accepts / self.trials
        p, k = self.seen_accepts, self.seen

        def mse(q: np.ndarray) -> float:  # sum over bins of k q^2 - 2 q p + p, divided by n
            return float((k * q * q - 2 * q * p + p).sum() / n)

        return mse(self.prior), mse(est)


@dataclass(frozen=True, slots=True)
class RoundModel:
    """Predicted costs of a round, from the online estimates. Seconds, joules, watts."""

    a: float  # mean per-token acceptance
    t_draft_s: float  # per drafted token
    t_net_s: float  # round trip beyond the edge's compute and queueing
    t_verify0_s: float  # edge verify time of a round, fixed part
    t_verify_per_token_s: float  # and per token in the edge's batched decode
    e_draft_j: float  # device energy per drafted token
    p_wait_w: float  # device power while waiting for the edge
    t_queue_s: float = 0.0  # wait for a batch at the edge (its load)
    others_tokens: float = 0.0  # other devices' tokens in the decode that verifies a round
    t_stream_s: float = 0.0  # per token the edge streams alone (the stream action)
    e_stream_j: float = 0.0  # device energy per streamed token
    free_tokens: int = 0  # the round's first tokens, already drafted ahead: no cost to draft

    def time_s(self, b: int) -> float:
        batch = b + 1 + self.others_tokens
        return (max(b - self.free_tokens, 0) * self.t_draft_s + self.t_net_s + self.t_queue_s
                + self.t_verify0_s + batch * self.t_verify_per_token_s)

    def energy_j(self, b: int) -> float:
        fresh = max(b - self.free_tokens, 0)
        return fresh * self.e_draft_j + (self.time_s(b) - fresh * self.t_draft_s) * self.p_wait_w


@dataclass(frozen=True, slots=True)
class Budget:
    """The long-term energy constraint: average power (W) or energy per token (J/token)."""

    power_w: float | None = None
    j_per_token: float | None = None

    def __post_init__(self) -> None:
        if (self.power_w is None) == (self.j_per_token is None):
            raise ValueError("give exactly one of power_w and j_per_token")

    def allowance_j(self, time_s: float, tokens: float) -> float:
        """C: the energy the budget allows for a round of this length and output."""
        if self.power_w is not None:
            return self.power_w * time_s
        assert self.j_per_token is not None
        return self.j_per_token * tokens


def choose_budget(
    model: RoundModel, q_j: float, v: float, budget: Budget | None, cap: int
) -> tuple[int, float]:
    """Outer loop: ``(b*, score*)`` maximizing [V N(b) - Q (E(b) - C(b))] / T(b) over 0..cap.

    Without a budget the penalty is zero and b* maximizes throughput N(b) / T(b).
    """
    best_b, best = 0, -math.inf
    for b in range(cap + 1):
        t = model.time_s(b)
        n = expected_tokens(model.a, b)
        penalty = 0.0
        if budget is not None:
            penalty = q_j * (model.energy_j(b) - budget.allowance_j(t, n))
        score = (v * n - penalty) / t
        if score > best + 1e-12:
            best_b, best = b, score
    return best_b, best


def stream_score(model: RoundModel, q_j: float, v: float, budget: Budget | None) -> float:
    """The stream action's ratio: [V - Q (e_stream - C(1 token))] / t_stream, per token."""
    t = max(model.t_stream_s, 1e-9)
    penalty = 0.0
    if budget is not None:
        penalty = q_j * (model.e_stream_j - budget.allowance_j(t, 1.0))
    return (v - penalty) / t


def should_stream(model: RoundModel, q_j: float, v: float, budget: Budget | None,
                  cap: int) -> bool:
    """Whether streaming beats the best drafting budget (``choose_budget``'s optimum)."""
    _, best = choose_budget(model, q_j, v, budget, cap)
    return stream_score(model, q_j, v, budget) > best


def ahead_value(model: RoundModel, *, k: int, p_hit: float, q_j: float, score: float,
                budget: Budget | None) -> float:
    """Drift-plus-penalty value of drafting ``k`` tokens ahead of a round in flight (see the
    module docstring): the expected drafting time it saves the next round, at ``score``
    (value per second, the outer loop's optimum), less the queue's price of its extra energy."""
    if k <= 0:
        return 0.0
    saved_s = min(max(p_hit, 0.0), 1.0) * (k - 1) * model.t_draft_s
    extra_j = k * (model.e_draft_j - model.t_draft_s * model.p_wait_w)
    penalty = q_j * extra_j
    if budget is not None and budget.power_w is not None:
        penalty += q_j * budget.power_w * saved_s  # a shorter round earns less allowance
    return score * saved_s - penalty


def choose_ahead(model: RoundModel, *, drafted: int, p_hit: float, q_j: float, score: float,
                 budget: Budget | None, cap: int) -> int:
    """How many tokens to draft ahead of a round of ``drafted`` tokens: the best k in 0..K,
    K what fits in the round's predicted wait (at most ``cap``); 0 when none pays."""
    if drafted <= 0:
        return 0
    wait_s = model.time_s(drafted) - drafted * model.t_draft_s
    k_max = min(cap, int(wait_s / max(model.t_draft_s, 1e-9)))
    best_k, best = 0, 0.0
    for k in range(2, k_max + 1):
        val = ahead_value(model, k=k, p_hit=p_hit, q_j=q_j, score=score, budget=budget)
        if val > best + 1e-15:
            best_k, best = k, val
    return best_k


def keep_drafting(
    *, v: float, q_j: float, score: float, survival: float, a_next: float,
    e_draft_j: float, t_draft_s: float, budget: Budget | None = None,
) -> bool:
    """Inner loop: is one more drafted token worth its energy and time?

    The token adds survival * a_next expected tokens, e_draft_j joules and t_draft_s seconds
    to the round; with a ``budget`` it also adds to the round's allowance C (P * t_draft_s
    for a power budget, eps * survival * a_next for an energy-per-token one), which offsets
    its energy in the queue's penalty, exactly as C(b) does in the outer loop's ratio."""
    gain = survival * a_next
    allowance = budget.allowance_j(t_draft_s, gain) if budget is not None else 0.0
    return v * gain - q_j * (e_draft_j - allowance) - score * t_draft_s > 0.0


@dataclass(slots=True)
class Estimates:
    """Online (EWMA) estimates of the round model's parameters, with sane priors."""

    # Priors: a Raspberry Pi 5 class device (hardware-profiles.md: Gemma-3-270M ~14 tok/s on a
    # Pi 4, ~3 W idle) and a GPU edge. Timing and energy priors carry half a sample's weight:
    # the first measurement moves them two thirds of the way, the next ones 1/2.5, 1/3.5, ...
    a: Ewma = field(default_factory=lambda: Ewma(0.6))
    t_draft_s: Ewma = field(default_factory=lambda: Ewma(0.05, prior_weight=0.5))
    t_net_s: Ewma = field(default_factory=lambda: Ewma(0.005, prior_weight=0.5))
    verify_s: LinearFit = field(default_factory=lambda: LinearFit(0.016, 0.004))  # vs batch
    queue_s: Ewma = field(default_factory=lambda: Ewma(0.0, prior_weight=0.5))
    others_tokens: Ewma = field(default_factory=lambda: Ewma(0.0, prior_weight=0.5))
    # The stream action, per token. None until the first stretch: until then its price is
    # derived from the round model (a one-position verify, no RTT per token, waiting power).
    t_stream_s: Ewma | None = None
    e_stream_j: Ewma | None = None
    e_draft_j: Ewma = field(default_factory=lambda: Ewma(0.25, prior_weight=0.5))
    p_wait_w: Ewma = field(default_factory=lambda: Ewma(3.0, prior_weight=0.5))

    def model(self) -> RoundModel:
        v0, v1 = self.verify_s.coef()
        return RoundModel(
            a=min(max(self.a.value, A_MIN), A_MAX),
            t_draft_s=max(self.t_draft_s.value, 1e-6),
            t_net_s=max(self.t_net_s.value, 0.0),
            t_verify0_s=v0,
            t_verify_per_token_s=v1,
            e_draft_j=max(self.e_draft_j.value, 0.0),
            p_wait_w=max(self.p_wait_w.value, 0.0),
            t_queue_s=max(self.queue_s.value, 0.0),
            others_tokens=max(self.others_tokens.value, 0.0),
            t_stream_s=self._t_stream(v0, v1),
            e_stream_j=(self.e_stream_j.value if self.e_stream_j is not None
                        else self._t_stream(v0, v1) * max(self.p_wait_w.value, 0.0)),
        )

    def _t_stream(self, v0: float, v1: float) -> float:
        if self.t_stream_s is not None:
            return max(self.t_stream_s.value, 1e-6)
        return max(v0 + v1 * (1 + self.others_tokens.value) + self.queue_s.value, 1e-6)

    def observe_stream(self, *, tokens: int, time_s: float, energy_j: float) -> None:
        """Fold one streamed stretch (``tokens`` from the edge alone) into the estimates."""
        if tokens <= 0:
            return
        if self.t_stream_s is None or self.e_stream_j is None:
            self.t_stream_s = Ewma(time_s / tokens, prior_weight=0.0)
            self.e_stream_j = Ewma(energy_j / tokens, prior_weight=0.0)
            return
        self.t_stream_s.update(time_s / tokens)
        self.e_stream_j.update(energy_j / tokens)

    def observe(
        self, *, drafted: int, accepted: int, draft_s: float, rtt_s: float, verify_s: float,
        round_s: float, energy_j: float, draft_energy_j: float, catchup_tokens: int = 0,
        queue_s: float | None = None, batch_tokens: int | None = None, predrafted: int = 0,
        ahead_s: float = 0.0, ahead_energy_j: float = 0.0,
    ) -> None:
        """Fold one measured round into the estimates.

        A round whose draft first caught up on more than one committed token (after rounds
        that drafted nothing, or a prompt's prefill) does not update the per-token draft time
        and energy: its draft time is mostly that catch-up, and taking it as the price of a
        drafted token makes drafting look dearer the longer it was not done, a trap from
        which the controller never drafts again.

        ``queue_s`` and ``batch_tokens`` are the edge's report of its load (None from an edge
        that does not report it: then the round's own tokens are the whole batch).

        Drafting ahead: the ``predrafted`` tokens cost this round no draft time, and the time
        and energy spent drafting ahead during the wait (``ahead_s``, ``ahead_energy_j``) are
        not waiting: both stay out of the per-token draft cost and the waiting power."""
        if drafted > 0:
            judged = min(drafted, accepted + 1)  # tokens the edge actually ruled on
            self.a.update(accepted / judged)
            fresh = drafted - predrafted
            if catchup_tokens <= 1 and fresh > 0:
                self.t_draft_s.update(draft_s / fresh)
                self.e_draft_j.update(draft_energy_j / fresh)
        own = drafted + 1
        batch = own if batch_tokens is None else max(batch_tokens, own)
        self.verify_s.update(float(batch), verify_s)
        self.others_tokens.update(batch - own)
        wait_s = max(queue_s or 0.0, 0.0)
        self.queue_s.update(wait_s)
        # Everything in the round that is neither drafting, queueing nor verifying: network,
        # framing, both sides' bookkeeping. T(b) then adds up to the measured round time.
        self.t_net_s.update(max(round_s - draft_s - verify_s - wait_s, 0.0))
        wait_s = round_s - draft_s - ahead_s
        if wait_s > 1e-4:
            self.p_wait_w.update(max(energy_j - draft_energy_j - ahead_energy_j, 0.0) / wait_s)
