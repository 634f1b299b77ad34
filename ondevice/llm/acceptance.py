"""Acceptance models: the probability that a drafted token survives verification. No I/O.

GELATO's inner loop drafts one more token only while its expected value beats its cost, and the
value is the probability a(.) that the token is accepted. The draft computes its full
next-token distribution anyway, so several features of it come free:

- ``entropy`` H (nats), which AdaEDL's bound 1 - sqrt(c H) turns into a prior guess;
- ``top1``, the probability of the draft's most likely token, and ``margin``, top1 minus the
  second most likely token's probability (a confident draft has both high);
- ``position``, the token's index in its drafting round;

and the model itself keeps ``running``, an exponentially weighted acceptance rate of the tokens
it has seen judged (the text's current "difficulty").

Models here share one interface (``AcceptancePredictor``): ``predict(f)``, ``observe(f, y)``,
``observe_round(features, n_accepted)``, ``brier()`` and ``calibration()``, all scored
prequentially (each outcome against the prediction made before it was seen):

- ``LogisticAcceptance``: online Bayesian logistic regression on a chosen feature subset, starting
  exactly at AdaEDL's bound;
- ``BinnedAcceptance``: GELATO's original entropy-binned model (``AcceptanceModel``);
- ``AdaEDLAcceptance``: the bound alone, never learning (the reference).

``compare_feature_sets`` replays a recorded trace through several of them.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ondevice.common.speculative import entropy_nats
from ondevice.llm.gelato import A_MAX, A_MIN, ADAEDL_C, adaedl_bound

FEATURE_NAMES: tuple[str, ...] = ("entropy", "top1", "margin", "position", "running")
DEFAULT_SETS: tuple[str, ...] = (
    "entropy-bins", "adaedl", "entropy", "entropy+top1+margin",
    "entropy+top1+margin+position+running",
)
POSITION_CAP = 8  # positions at or beyond this share one feature value
CALIBRATION_BINS = 10  # reliability-table bins over the predicted probability, width 0.1


@dataclass(frozen=True, slots=True)
class TokenFeatures:
    """What the draft knows about one drafted token before it is verified."""

    entropy: float  # nats, of the draft's next-token distribution
    top1: float  # probability of the draft's most likely token, in [0, 1]
    margin: float  # top1 minus the second most likely token's probability, in [0, top1]
    position: int  # 0-based index of the token within its drafting round


def top_two(probs: np.ndarray) -> tuple[float, float]:
    """``(top1, margin)`` of a probability vector: its largest entry, and the largest minus the
    second largest (the largest itself for a one-entry vector). ``[vocab] -> (float, float)``;
    O(vocab) by ``np.partition``, no sort."""
    if probs.shape[0] == 1:
        return float(probs[0]), float(probs[0])
    two = np.partition(probs, probs.shape[0] - 2)[-2:]  # [2]; two[1] is the maximum
    return float(two[1]), float(two[1] - two[0])


def token_features(probs: np.ndarray, position: int) -> TokenFeatures:
    """Features of the token drafted from ``probs`` (a softmaxed full-vocabulary vector,
    ``[vocab]``) at 0-based ``position`` in its round."""
    top1, margin = top_two(probs)
    return TokenFeatures(entropy=entropy_nats(probs), top1=top1, margin=margin,
                         position=int(position))


def adaedl_prior(entropy: float, c: float = ADAEDL_C) -> float:
    """AdaEDL's bound at ``entropy`` (nats), clipped to [A_MIN, A_MAX]: every model's prior."""
    return min(max(adaedl_bound(entropy, c), A_MIN), A_MAX)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _sigmoid(z: float) -> float:
    if z >= 0.0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _clip(p: float) -> float:
    return min(max(p, A_MIN), A_MAX)


class AcceptancePredictor(Protocol):
    """The interface GELATO needs from an acceptance model."""

    def predict(self, f: TokenFeatures) -> float: ...

    def observe(self, f: TokenFeatures, accepted: bool) -> None: ...

    def observe_round(self, features: Sequence[TokenFeatures], n_accepted: int) -> None: ...

    def brier(self) -> tuple[float, float]: ...

    def calibration(self) -> list[dict[str, float]]: ...


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


class _Prequential:
    """Prequential scoring: each outcome against the prediction made before it was seen, and
    against AdaEDL's (clipped) bound. Sums only, O(1) per outcome."""

    def __init__(self, c: float) -> None:
        self.c = c
        self.n = 0
        self.se_prior = 0.0  # sum of squared errors of the AdaEDL prior
        self.se_model = 0.0  # of the model's predictions
        self.bin_pred = np.zeros(CALIBRATION_BINS)  # [bins] sums of predictions
        self.bin_obs = np.zeros(CALIBRATION_BINS)  # [bins] sums of outcomes
        self.bin_n = np.zeros(CALIBRATION_BINS, dtype=np.int64)  # [bins]

    def record(self, f: TokenFeatures, predicted: float, accepted: bool) -> None:
        y = 1.0 if accepted else 0.0
        self.n += 1
        self.se_prior += (adaedl_prior(f.entropy, self.c) - y) ** 2
        self.se_model += (predicted - y) ** 2
        i = min(int(predicted * CALIBRATION_BINS), CALIBRATION_BINS - 1)
        self.bin_pred[i] += predicted
        self.bin_obs[i] += y
        self.bin_n[i] += 1

    def brier(self) -> tuple[float, float]:
        if self.n == 0:
            return math.nan, math.nan
        return self.se_prior / self.n, self.se_model / self.n

    def calibration(self) -> list[dict[str, float]]:
        out = []
        for i in map(int, np.flatnonzero(self.bin_n)):
            n = int(self.bin_n[i])
            out.append({
                "p_lo": i / CALIBRATION_BINS, "p_hi": (i + 1) / CALIBRATION_BINS,
                "predicted": float(self.bin_pred[i] / n),
                "observed": float(self.bin_obs[i] / n), "n": n,
            })
        return out


class PrequentialModel(ABC):
    """Base of the models here: ``observe_round``'s censoring and the prequential score.
    Subclasses implement ``predict`` and ``_learn`` (an update that scores nothing)."""

    def __init__(self, c: float) -> None:
        self._score = _Prequential(c)

    @abstractmethod
    def predict(self, f: TokenFeatures) -> float:
        """P(accept) for ``f`` now, in [A_MIN, A_MAX]."""

    @abstractmethod
    def _learn(self, f: TokenFeatures, accepted: bool) -> None:
        """Update the model with one outcome (scoring is done by the caller)."""

    def _end_round(self, judged: Sequence[TokenFeatures], n_accepted: int) -> None:  # noqa: B027
        """Hook after a round's tokens were learned (the running rate); default: nothing."""

    def observe(self, f: TokenFeatures, accepted: bool) -> None:
        """Score the current prediction for ``f`` against the outcome, then learn from it."""
        self._score.record(f, self.predict(f), accepted)
        self._learn(f, accepted)
        self._end_round([f], 1 if accepted else 0)

    def observe_round(self, features: Sequence[TokenFeatures], n_accepted: int) -> None:
        """A verified round: tokens before the first rejection were accepted, the first
        rejected one (index ``n_accepted``) was not; tokens after it were never judged and teach
        nothing. Every judged token is scored against the prediction made before the round
        (as drafting saw it), then the model learns from them in order."""
        judged = list(features[: n_accepted + 1])
        preds = [self.predict(f) for f in judged]
        for j, (f, p) in enumerate(zip(judged, preds, strict=True)):
            self._score.record(f, p, j < n_accepted)
        for j, f in enumerate(judged):
            self._learn(f, j < n_accepted)
        self._end_round(judged, n_accepted)

    def brier(self) -> tuple[float, float]:
        """(mean squared error of AdaEDL's clipped bound, of the model's prequential
        predictions) over every observed outcome; NaN before any. Lower is better."""
        return self._score.brier()

    def calibration(self) -> list[dict[str, float]]:
        """Reliability table of the prequential predictions: per non-empty bin of width 0.1 of
        the predicted probability, ``p_lo``, ``p_hi``, mean ``predicted``, ``observed`` accept
        rate and count ``n``. Calibrated: predicted ~ observed where n is large."""
        return self._score.calibration()

    @property
    def n_observed(self) -> int:
        return self._score.n


class AdaEDLAcceptance(PrequentialModel):
    """AdaEDL's clipped bound, never learning: the reference every learned model must beat."""

    def __init__(self, *, c: float = ADAEDL_C) -> None:
        super().__init__(c)
        self.c = c

    def predict(self, f: TokenFeatures) -> float:
        return adaedl_prior(f.entropy, self.c)

    def _learn(self, f: TokenFeatures, accepted: bool) -> None:
        """The bound does not learn."""


class BinnedAcceptance(PrequentialModel):
    """GELATO's entropy-binned model (``AcceptanceModel``) behind the TokenFeatures
    interface: it reads only ``f.entropy``. Its ``brier()`` is prequential, unlike the wrapped
    model's own (in-sample) one, which ``model`` still offers."""

    def __init__(self, *, h_max: float = 8.0, bins: int = 16, prior_count: float = 4.0,
                 c: float = ADAEDL_C) -> None:
        super().__init__(c)
        self.model = AcceptanceModel(h_max=h_max, bins=bins, prior_count=prior_count, c=c)

    def predict(self, f: TokenFeatures) -> float:
        return self.model.predict(f.entropy)

    def _learn(self, f: TokenFeatures, accepted: bool) -> None:
        self.model.observe(f.entropy, accepted)


class LogisticAcceptance(PrequentialModel):
    """P(accept | features, running rate), an online Bayesian logistic regression.

    Design (the bias and AdaEDL's logit always; the others by ``features``, in this order)::

        x = [1, logit(clip(1 - sqrt(c H))),  log1p(H) - 1,        # "entropy"
             top1 - 0.5, margin - 0.5,                            # "top1", "margin"
             min(position, 8) / 8 - 0.5, running - 0.5]           # "position", "running"

    with clip to [A_MIN, A_MAX] (so the logit lies in +-3.89). Every column is O(1) and, apart
    from the logit, roughly centred, so a weight moves the slope without shifting the average.

    Prior: w ~ N(w0, I / prior_precision), w0 = [0, 1, 0, ...]; the first prediction is exactly
    AdaEDL's clipped bound. ``prior_precision`` (default 1) is the Fisher information of about
    4 outcomes at p = 1/2 on a unit feature, per weight (the binned model's prior is worth 4
    outcomes per bin): the prior holds until a few dozen outcomes disagree with it, then the
    data take over. (On recorded Gemma 3 270M traces 0.5-2 did best; 4 and 8 learned slower.)

    Learning (online Newton on the Laplace posterior; an extended Kalman filter): per outcome y
    at x with p = sigmoid(w . x), the data precision D <- forget * D + p (1 - p) x x^T, then
    w <- w + (prior_precision I + D)^-1 x (y - p): one small (at most 7 x 7) solve, a few tens
    of microseconds a token. ``forget`` < 1 discounts old evidence (memory ~ 1 / (1 - forget)
    outcomes; default 0.999, ~1000 outcomes) so the model can follow a drift; the prior's
    precision is never forgotten.

    ``running``: an exponentially weighted accept rate of the judged tokens, starting at
    ``running_prior`` (0.6), r <- running_decay * r + (1 - running_decay) * y per judged token
    (decay 0.9: memory ~ 10 tokens, two or three rounds). It moves after a round, not within
    it: every token of a round is predicted and learned with the rate the round began with, as
    it was drafted.

    ``predict`` clips to [A_MIN, A_MAX]; learning uses the unclipped probability.
    """

    def __init__(
        self, features: Iterable[str] = FEATURE_NAMES, *, prior_precision: float = 1.0,
        forget: float = 0.999, running_prior: float = 0.6, running_decay: float = 0.9,
        c: float = ADAEDL_C,
    ) -> None:
        super().__init__(c)
        chosen = set(features)
        unknown = chosen - set(FEATURE_NAMES)
        if unknown:
            raise ValueError(f"unknown features {sorted(unknown)}; choose from {FEATURE_NAMES}")
        if prior_precision <= 0.0 or not 0.0 < forget <= 1.0 or not 0.0 <= running_decay < 1.0:
            raise ValueError("need prior_precision > 0, 0 < forget <= 1, 0 <= running_decay < 1")
        self.features: tuple[str, ...] = tuple(n for n in FEATURE_NAMES if n in chosen)
        self.c = c
        self.forget = forget
        self.running_decay = running_decay
        self.running = running_prior
        d = 2 + len(self.features)
        self.w0 = np.zeros(d)  # [d]
        self.w0[1] = 1.0
        self.w = self.w0.copy()  # [d]
        self.prior_precision = prior_precision
        self._prior = prior_precision * np.eye(d)  # [d, d]
        self.data_precision = np.zeros((d, d))  # [d, d], D above
        self._use = tuple(n in chosen for n in FEATURE_NAMES)

    @property
    def name(self) -> str:
        return "+".join(self.features) if self.features else "adaedl-logit"

    def design(self, f: TokenFeatures, running: float | None = None) -> np.ndarray:
        """The design vector x of ``f`` (with the current running rate unless given). ``[d]``."""
        r = self.running if running is None else running
        h = max(f.entropy, 0.0)
        x = [1.0, _logit(adaedl_prior(h, self.c))]
        use_h, use_t, use_m, use_p, use_r = self._use
        if use_h:
            x.append(math.log1p(h) - 1.0)
        if use_t:
            x.append(f.top1 - 0.5)
        if use_m:
            x.append(f.margin - 0.5)
        if use_p:
            x.append(min(f.position, POSITION_CAP) / POSITION_CAP - 0.5)
        if use_r:
            x.append(r - 0.5)
        return np.asarray(x)

    def predict(self, f: TokenFeatures) -> float:
        """P(accept) for ``f`` now, clipped to [A_MIN, A_MAX]."""
        return _clip(_sigmoid(float(self.w @ self.design(f))))

    def _learn(self, f: TokenFeatures, accepted: bool) -> None:
        x = self.design(f)  # [d]
        p = _sigmoid(float(self.w @ x))
        if self.forget < 1.0:
            self.data_precision *= self.forget
        self.data_precision += (p * (1.0 - p)) * (x[:, None] * x)  # [d, d]
        y = 1.0 if accepted else 0.0
        self.w += np.linalg.solve(self._prior + self.data_precision, x * (y - p))

    def _end_round(self, judged: Sequence[TokenFeatures], n_accepted: int) -> None:
        k = self.running_decay
        for j in range(len(judged)):
            self.running = k * self.running + (1.0 - k) * (1.0 if j < n_accepted else 0.0)


def make_model(spec: str, *, c: float = ADAEDL_C) -> PrequentialModel:
    """A model by feature-set name: ``"entropy-bins"`` (BinnedAcceptance), ``"adaedl"`` (the
    bound alone), or feature names joined by ``+`` (LogisticAcceptance over them)."""
    if spec == "entropy-bins":
        return BinnedAcceptance(c=c)
    if spec == "adaedl":
        return AdaEDLAcceptance(c=c)
    return LogisticAcceptance(spec.split("+"), c=c)


def compare_feature_sets(
    entropies: np.ndarray, top1: np.ndarray, margin: np.ndarray, accepts: np.ndarray, *,
    round_len: int = 4, sets: Sequence[str] = DEFAULT_SETS, c: float = ADAEDL_C,
) -> list[dict[str, object]]:
    """Prequential comparison of acceptance models on one sequence of trace positions.

    Inputs are per position, ``[N]`` each: the draft's entropy (nats), top1 and margin, and
    whether a token drafted there is accepted (greedy: the draft's argmax is the target's;
    sampling: one draw, as the simulator's ``acceptance_outcomes``).

    Protocol: rounds of ``round_len`` drafted tokens walk the positions. A round starting at i
    drafts i, i+1, ... and the verifier judges them up to and including the first rejection
    (at most ``round_len``, fewer at the end); with ``k`` accepted, the next round starts at
    i + k + 1 (the verified token replaces the rejected one, so the positions after it in the
    round were never judged). Within a round the token at offset j has ``position`` j. Every
    model predicts every judged token of the round from its state before the round, is scored
    on it, then observes the round (``observe_round``). Prompt boundaries are not marked:
    pass one prompt's positions, or accept rounds that straddle them.

    Returns one dict per entry of ``sets`` (names as ``make_model``): ``features`` (the name),
    ``brier`` (prequential mean squared error), ``n`` (judged tokens, the same for all) and
    ``calibration`` (the reliability table of ``calibration()``).
    """
    n = int(entropies.shape[0])
    if not (top1.shape == margin.shape == accepts.shape == (n,)):
        raise ValueError("entropies, top1, margin and accepts must all have shape (N,)")
    if round_len < 1:
        raise ValueError("round_len must be at least 1")
    models = [make_model(s, c=c) for s in sets]
    acc = np.asarray(accepts, dtype=bool)
    i = 0
    while i < n:
        window = acc[i : i + round_len]  # [<= round_len]
        misses = np.flatnonzero(~window)
        k = int(misses[0]) if misses.size else int(window.shape[0])
        judged = min(k + 1, int(window.shape[0]))
        feats = [TokenFeatures(float(entropies[i + j]), float(top1[i + j]),
                               float(margin[i + j]), j) for j in range(judged)]
        for m in models:
            m.observe_round(feats, k)
        i += k + 1
    return [{"features": s, "brier": m.brier()[1], "n": m.n_observed,
             "calibration": m.calibration()} for s, m in zip(sets, models, strict=True)]
