"""GELATO as a policy: the math of ``gelato`` driven round by round, with the Thompson-sampled
choice between drafting and streaming (the derivation is ``gelato``'s docstring)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from ondevice.common.estimators import RealizedRate
from ondevice.llm import gelato
from ondevice.llm._policy import Policy, RoundStats
from ondevice.llm.acceptance import (
    BinnedAcceptance,
    LogisticAcceptance,
    PrequentialModel,
    TokenFeatures,
)
from ondevice.llm.policy_names import DEFAULT_V


def _p_greater(mean_a: float, sd_a: float, mean_b: float, sd_b: float) -> float:
    """P(A > B) for independent normals A, B."""
    return 0.5 * math.erfc(-(mean_a - mean_b) / math.sqrt(2 * (sd_a ** 2 + sd_b ** 2) + 1e-300))




class GelatoPolicy(Policy):
    """GELATO: drift-plus-penalty drafting with drafting ahead, entropy early exit per token,
    and a Thompson-sampled choice between drafting and letting the edge stream.

    ``budget`` None means no energy constraint (the queue stays empty and the policy maximizes
    tokens per second). Measured round energy drives the virtual queue. ``seed`` seeds the
    one random generator (Thompson samples), so a run is reproducible.

    Every constant below was tuned on the ``mixed`` prompt set's trace only
    (``ondevice.bench.trace.TUNING_SET``); the other shipped traces are held out.
    """

    name = "gelato"
    needs_entropy = True
    needs_features = True

    FORGET_PER_TOKEN = 0.999  # evidence of each action (and the acceptance) fades per token
    STREAM_TOKENS = 16  # a first stretch; stretches double while streaming keeps being chosen
    STREAM_MAX_TOKENS = 1024
    SURE = 0.99  # P(streaming is the better action) above which a stretch runs to the end
    MODEL_SD = 0.05  # relative sd of a model prediction beyond its parameters' uncertainty
    STREAM_MODEL_SD = 0.15  # ... of the stream's, before a stretch measured it
    # log t_draft: a prior sd of 1.5 (boards draft at 5-100 ms a token), and each measured
    # round worth a measurement of sd 0.1 (a board's per-token time varies ~10 % round to
    # round): after n rounds sd = (1 / 1.5^2 + n / 0.1^2)^-1/2
    T_DRAFT_LOG_SD = 1.5
    T_DRAFT_ROUND_SD = 0.1
    PLAN_EVERY = 8  # rounds between re-solving the plan (its inputs move slowly)
    DRAW_WITHIN = 5.0  # posterior means further apart than this many sds: no draws needed
    DRAFT_STINT = 4  # drafting, once chosen, runs this many rounds before the next choice
    PRICE_MOVE = 0.1  # re-solve the plan when the price of a joule moved by this share
    # Under a budget, joules are priced at the queue plus a place-holder, FLOOR_SHARE of the
    # queue that would balance it by the model (``gelato.balance_price``), from FLOOR_FROM
    # measured rounds on, re-estimated every FLOOR_EVERY: the queue then climbs only the rest
    # of the way, so its O(V) climb no longer overspends.
    FLOOR_SHARE = 0.8
    FLOOR_FROM = 8
    FLOOR_EVERY = 64
    FIRST_ROUNDS = 2  # before any round measured t_draft, up to this many rounds draft
    # A prompt's first tokens are its hardest to draft (on the shipped traces acceptance is
    # 0.50-0.59 over a prompt's first four tokens, 0.85-0.92 overall): the opening has an
    # acceptance estimate of its own, and a decision there is about the opening alone.
    OPENING_TOKENS = 16

    def __init__(
        self, *, v: float = DEFAULT_V, budget: gelato.Budget | None = None, cap: int = 16,
        estimates: gelato.Estimates | None = None, stream: bool = True, ahead: bool = True,
        acceptance: str = "logistic", seed: int = 0,
    ) -> None:
        if v <= 0:
            raise ValueError("V must be > 0")
        self.v, self.budget, self.cap = v, budget, cap
        self.stream = stream  # whether the stream action is in the action set
        self.ahead = ahead  # whether drafting ahead is in the action set
        self.rng = np.random.default_rng(seed)
        self.ahead_drafted = self.ahead_hits = self.ahead_rounds = 0
        self.streamed = 0  # tokens the edge generated alone at this policy's choice
        self.stretches = 0
        self.explored = 0  # decisions where the sampled value overturned the posterior mean
        self.edge_advice = False  # the edge's latest advice to stream (the fleet's best)
        self.advised = 0  # stretches streamed on the edge's advice
        self.q_j = 0.0
        self._q_floor = 0.0  # the place-holder price (FLOOR_SHARE of the balancing queue)
        self._plan_price = 0.0  # the price the plan was solved at
        self._floor_at = self.FLOOR_FROM
        self.est = estimates or gelato.Estimates()
        # P(accept) of each drafted token: "logistic" on the draft's entropy, top-1
        # probability, top-1 margin, position and running rate (``acceptance.py``), or
        # "bins", the entropy-binned model of the paper's rule.
        if acceptance not in ("logistic", "bins"):
            raise ValueError(f"acceptance must be 'logistic' or 'bins', not {acceptance!r}")
        self.acceptance: PrequentialModel = (LogisticAcceptance() if acceptance == "logistic"
                                             else BinnedAcceptance())
        # What each action realized, priced at the queue of now (``RealizedRate``).
        self._realized = {"draft": RealizedRate(), "stream": RealizedRate()}
        self._model = self.est.model()
        self._plan = gelato.plan_rounds(self._model, 0.0, v, budget, cap, ahead=ahead)
        self._plan_age = 0
        # a round that explores follows the plan of the model its Thompson draw came from
        self._explore: tuple[gelato.Plan, gelato.RoundModel] | None = None
        self._ready = 0  # tokens drafted ahead that head the next round
        self._prior: dict[bool, tuple[float, float]] = {}  # ``_draft_prior``, per plan
        self._ready_now = 0  # ... of the round being drafted
        self._pending = 0  # tokens streamed since the draft last ran (its catch-up)
        self._pos = 0  # tokens produced in the current prompt (its opening: OPENING_TOKENS)
        self._streak = 0  # stretches chosen in a row
        self._stint = 0  # rounds left of the drafting stint chosen last
        self._survival = 1.0
        self._judged_now = 0
        self.rounds = 0
        self.q_sum = 0.0
        self.b_sum = 0
        self.energy_j = 0.0
        self.time_s = 0.0
        self.tokens = 0

    # -- the plan ---------------------------------------------------------------------------

    def _refresh(self, force: bool = False) -> gelato.Plan:
        """The plan at the current estimates and queue, re-solved every PLAN_EVERY rounds
        (every round over the first 16, while the estimates move fast), and whenever the
        price of a joule moved by more than PRICE_MOVE since (a queue climbing under a
        budget changes the best plan at once)."""
        moved = abs(self._price - self._plan_price) > self.PRICE_MOVE * max(
            self._plan_price, 1e-3)
        if force or moved or self._plan_age >= (1 if self.rounds < 16 else self.PLAN_EVERY):
            self._model = self.est.model()
            if self.budget is not None and self.rounds >= self._floor_at:
                # the place-holder price, from the model (``gelato.balance_price``)
                self._q_floor = self.FLOOR_SHARE * gelato.balance_price(
                    self._model, self.v, self.budget, self.cap, ahead=self.ahead,
                    stream_tokens=self.STREAM_MAX_TOKENS if self.stream else 0)
                self._floor_at = self.rounds + self.FLOOR_EVERY
            self._plan = gelato.plan_rounds(self._model, self._price, self.v, self.budget,
                                            self.cap, ahead=self.ahead)
            self._plan_price = self._price
            self._plan_age = 0
            self._prior = {}
        return self._plan

    def _sampled_model(self, z_a: float | None, z_t: float, opening: bool
                       ) -> gelato.RoundModel:
        """The round model with the acceptance (the prompt's opening's, or its body's) drawn
        from its posterior (``z_a`` None) or ``z_a`` posterior sds off its mean, and the
        draft's time (and energy) scaled by exp(sd * ``z_t``)."""
        m = self._model
        a = self.est.a_open if opening else self.est.a
        a_x = float(self.rng.beta(a.alpha, a.beta)) if z_a is None else a.value + z_a * a.sd
        sd_t = (self.T_DRAFT_LOG_SD ** -2 + self.est.draft_rounds
                * self.T_DRAFT_ROUND_SD ** -2) ** -0.5
        scale = math.exp(z_t * sd_t)
        return replace(m, a=min(max(a_x, gelato.A_MIN), gelato.A_MAX),
                       t_draft_s=m.t_draft_s * scale, e_draft_j=m.e_draft_j * scale)

    @property
    def _price(self) -> float:
        """The price of a joule in the decisions: the queue on top of the place-holder (so it
        swings about the balancing price as the queue does about its share of it)."""
        return self.q_j + self._q_floor

    def _draft_rate(self, model: gelato.RoundModel) -> float:
        """Drafting's value per second under ``model`` (``gelato.pipeline_rate``: closed form,
        microseconds, where solving a plan takes a fraction of a millisecond)."""
        return gelato.pipeline_rate(model, self._price, self.v, self.budget, self.cap,
                                    ahead=self.ahead).value_per_s

    # -- the action choice ------------------------------------------------------------------

    def _posterior(self, action: str, mean: float, sd: float) -> tuple[float, float, float]:
        """(posterior mean, its sd, w): the model's prediction (``mean``, spread ``sd``) fused
        with what the action realized, as Gaussians; w = sd_r^2 / (sd^2 + sd_r^2) is the
        model's share (1 when nothing was realized)."""
        got = self._realized[action].rate(self.v, self._price, typical=mean)
        if got is None or not math.isfinite(got[1]) or got[1] <= 0:
            return mean, sd, 1.0
        w = got[1] ** 2 / (max(sd, 1e-12) ** 2 + got[1] ** 2)
        return w * mean + (1.0 - w) * got[0], math.sqrt(w) * got[1], w

    def _draw(self, action: str, w: float, model_draw: float) -> float:
        """A draw from the action's posterior: w x_model + (1 - w) x_realized (with Gaussians,
        exactly a posterior draw; here it keeps the model draw's skew)."""
        if w >= 1.0:
            return model_draw
        got = self._realized[action].rate(self.v, self._price)
        assert got is not None
        return w * model_draw + (1.0 - w) * (got[0] + got[1] * float(self.rng.standard_normal()))

    def _catchup(self, value: float, left: int | None) -> float:
        """Drafting's value per second for the rest of the prompt: less the draft's catch-up
        on the tokens streamed since it last ran (time that earns nothing, energy at the
        queue's price), spread over the ``left`` tokens."""
        if not self._pending or not left:
            return value
        m = self._model
        t_left = left / max(self._plan.tokens_per_s, 1e-9)
        t_c = self._pending * m.t_catchup_s
        e_c = t_c * m.e_draft_j / max(m.t_draft_s, 1e-9)
        c_c = self.budget.allowance_j(t_c, 0.0) if self.budget is not None else 0.0
        return (value * t_left - self._price * (e_c - c_c)) / (t_left + t_c)

    def _draft_prior(self, opening: bool) -> tuple[float, float]:
        """(the model's prediction of drafting's value per second, its spread: the values at
        acceptance one sd up and t_draft one sd down, and the other way round, and a relative
        model error), with the acceptance of a prompt's ``opening`` or of its body; kept until
        the plan is re-solved."""
        if opening not in self._prior:
            mean = self._draft_rate(self._sampled_model(0.0, 0.0, opening))
            hi, lo = (self._draft_rate(self._sampled_model(z, -z, opening)) for z in (1.0, -1.0))
            self._prior[opening] = (mean, math.hypot(0.5 * (hi - lo), self.MODEL_SD * abs(mean)))
        return self._prior[opening]

    def _draft_value(self, left: int | None, opening: bool) -> tuple[float, float, float]:
        """(posterior mean, sd, the model's share w) of drafting's value per second for the
        rest of the prompt (``_catchup``); the body's fused with what drafting realized."""
        mean, sd = self._draft_prior(opening)
        w = 1.0
        if not opening:  # drafting's realized rate is the body's
            mean, sd, w = self._posterior("draft", mean, sd)
        scaled = self._catchup(mean, left)
        ratio = scaled / mean if mean else 1.0
        return scaled, sd * abs(ratio), w

    def _stream_value(self, tokens: int) -> tuple[float, float, float, float]:
        """(posterior mean, sd, the model's share w, the model's prediction) of streaming's
        value per second for a stretch of ``tokens``."""
        mean = gelato.stream_score(self._model, self._price, self.v, self.budget, tokens)
        spread = (self.STREAM_MODEL_SD if self.est.t_stream_s is None else self.MODEL_SD
                  ) * abs(mean)
        post, sd, w = self._posterior("stream", mean, spread)
        return post, sd, w, mean

    def wants_draft_time(self) -> bool:
        return self.est.draft_rounds == 0

    def calibrate(self, draft_s: float, draft_energy_j: float) -> None:
        """A measured drafted token: t_draft is then known (one measured round's worth) and
        the first rounds need not draft to measure it."""
        self.est.observe_draft(draft_s=draft_s, draft_energy_j=draft_energy_j)
        self._plan_age = self.PLAN_EVERY

    def begin_prompt(self) -> None:
        self._pending, self._streak, self._ready, self._pos, self._stint = 0, 0, 0, 0, 0

    def stream_tokens(self, left: int | None = None) -> int:
        """The stream action: a stretch when a Thompson draw of streaming's value per second
        beats one of drafting's (each the model's prediction at parameters drawn from their
        posteriors, fused with what the action realized; ``gelato.py``'s docstring), else 0.
        When drafting's draw wins against the posterior means, the round explores: it follows
        the plan of the drawn model. A stretch is ``STREAM_TOKENS``, doubling while streaming
        is chosen in a row, or the rest of the prompt once streaming is the better action
        with probability ``SURE``. The edge's advice to stream is followed unless the energy
        budget is in debt (a queue above zero)."""
        self._explore = None
        if not self.stream or (left is not None and left <= 1):
            return 0
        advised = self.edge_advice and self.q_j <= 0.0
        self._refresh()
        length = min(self.STREAM_TOKENS << min(self._streak, 16), self.STREAM_MAX_TOKENS)
        if left is not None:
            length = min(length, left)
        if advised:
            self.advised += 1
            return self._stretch(length)
        if self._measuring():
            return 0
        if self._stint > 0:  # drafting was chosen for a stint of rounds: no decision now
            self._stint -= 1
            return 0
        opening = self._pos < self.OPENING_TOKENS
        d_mean, d_sd, d_w = self._draft_value(left, opening)
        s_mean, s_sd, s_w, s_model = self._stream_value(
            left if left is not None else length)
        sure = _p_greater(s_mean, s_sd, d_mean, d_sd)
        if opening:
            # In a prompt's opening the choice follows the posterior means: an exploration
            # there would judge drafting by the prompt's hardest tokens. Streaming the whole
            # prompt needs to be sure of it against the body's drafting too.
            if s_mean <= d_mean:
                return 0
            b_mean, b_sd, _ = self._draft_value(left, False)
            sure = min(sure, _p_greater(s_mean, s_sd, b_mean, b_sd))
            if sure >= self.SURE and left is not None:
                return self._stretch(left)
            return self._stretch(min(self.OPENING_TOKENS - self._pos, length))
        drawn = None
        if abs(s_mean - d_mean) > self.DRAW_WITHIN * math.hypot(s_sd, d_sd):
            draft_wins = d_mean > s_mean  # too far apart for a draw to overturn: no draws
        else:  # Thompson: each action's value drawn from its posterior
            drawn = self._sampled_model(None, float(self.rng.standard_normal()), False)
            x_model = self._draft_rate(drawn) * (1 + self.MODEL_SD * self.rng.standard_normal())
            d_x = self._catchup(self._draw("draft", d_w, x_model), left)
            s_spread = (self.STREAM_MODEL_SD if self.est.t_stream_s is None
                        else self.MODEL_SD) * abs(s_model)
            s_x = self._draw("stream", s_w, s_model + s_spread * float(
                self.rng.standard_normal()))
            draft_wins = d_x >= s_x
        if draft_wins:
            self._streak = 0
            self._stint = self.DRAFT_STINT - 1
            if s_mean > d_mean and drawn is not None:  # the draw overturned the means:
                self.explored += 1  # explore drafting as the drawn model would
                self._explore = (gelato.plan_rounds(drawn, self._price, self.v, self.budget,
                                                    self.cap, ahead=self.ahead), drawn)
            return 0
        if d_mean > s_mean:
            self.explored += 1
        if sure >= self.SURE and left is not None:  # sure of streaming: to the prompt's end
            length = left
        return self._stretch(length)

    def _stretch(self, tokens: int) -> int:
        self._streak += 1
        self.stretches += 1
        return tokens

    # -- a drafting round -------------------------------------------------------------------

    def _acting(self) -> tuple[gelato.Plan, gelato.RoundModel]:
        """The plan and model this round follows: the drawn model's when exploring."""
        return self._explore or (self._plan, self._model)

    EXPLORE_MIN = 4  # an exploring round drafts at least this many: from the second token on
    # they measure t_draft apart from the catch-up, which the first evaluation carries

    def _measuring(self) -> bool:
        """Whether the next round is one of the first ones, which draft (``EXPLORE_MIN``)
        while no round has measured t_draft yet: a bandit tries every arm once."""
        return self.est.draft_rounds == 0 and self.rounds < self.FIRST_ROUNDS

    def round_budget(self) -> int:
        self._refresh()
        if self._measuring() and self._explore is None:
            self._explore = (self._plan, self._model)
        plan, _ = self._acting()
        self._ready_now = self._ready
        r = min(self._ready, len(plan.b) - 1)
        b = int(plan.b[r])
        if self._explore is not None:
            b = max(b, self.EXPLORE_MIN)
        self._survival = 1.0
        self._judged_now = 0
        self.b_sum += b
        if b == 0:
            return self._ready
        return min(self.cap, max(2 * b, self._ready))

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
        if self._explore is not None and drafted < self.EXPLORE_MIN:
            return True
        plan, model = self._acting()
        return gelato.plan_keeps_drafting(
            plan, model, drafted=drafted, survival=self._survival, a_next=a,
            free=drafted < self._ready_now, v=self.v, q_j=self._price, budget=self.budget)

    def ahead_tokens(self, drafted: int) -> int:
        """Drafting ahead (``gelato.plan_ahead``): a hit needs every drafted token accepted
        (the predicted survival; tokens the inner loop did not see at the mean acceptance)
        and the draft's next token to be the edge's (the mean acceptance)."""
        if not self.ahead or not drafted:
            return 0
        plan, m = self._acting()
        unseen = max(drafted - self._judged_now, 0)
        p_hit = self._survival * m.a ** (unseen + 1)
        return gelato.plan_ahead(plan, m, drafted=drafted, p_hit=p_hit, q_j=self._price)

    # -- learning ---------------------------------------------------------------------------

    def _net_j(self, energy_j: float, time_s: float, tokens: float) -> float:
        """E - C: the outcome's energy less what the budget allows for it."""
        allowance = self.budget.allowance_j(time_s, tokens) if self.budget is not None else 0.0
        return energy_j - allowance

    def _account(self, tokens: int, time_s: float, energy_j: float) -> None:
        """Queue, evidence fading, and totals, for any outcome."""
        if self.budget is not None:
            allowance = self.budget.allowance_j(time_s, tokens)
            self.q_j = gelato.queue_update(self.q_j, energy_j, allowance)
        fade = self.FORGET_PER_TOKEN ** max(tokens, 0)
        for r in self._realized.values():
            r.forget(fade)
        self.est.forget(fade)
        self.energy_j += energy_j
        self.time_s += time_s
        self.tokens += tokens

    def observe_stream(self, tokens: int, time_s: float, energy_j: float,
                       edge_advice: bool | None = None, verify_s: float | None = None) -> None:
        if edge_advice is not None:
            self.edge_advice = edge_advice
        self._account(tokens, time_s, energy_j)
        self._pos += tokens
        self._realized["stream"].add(tokens, self._net_j(energy_j, time_s, tokens), time_s)
        self.est.observe_stream(tokens=tokens, time_s=time_s, energy_j=energy_j,
                                verify_s=verify_s)
        self.streamed += tokens
        self._pending += tokens
        self._ready = 0
        self._plan_age = self.PLAN_EVERY  # the stream's figures moved: re-solve

    def observe(self, stats: RoundStats) -> None:
        if stats.edge_advice is not None:
            self.edge_advice = stats.edge_advice
        self._ready = stats.ahead - 1 if stats.ahead_hit else 0
        if stats.ahead:
            self.ahead_rounds += 1
            self.ahead_drafted += stats.ahead
            self.ahead_hits += int(stats.ahead_hit)
        # A round after a stretch also pays the draft's catch-up on the streamed tokens: that
        # is the stretch's cost (priced in ``_draft_value``), not drafting's, so it is taken
        # out of the round's realized outcome.
        m = self._model
        catchup_s = (max(stats.draft_s - (stats.drafted - stats.predrafted) * m.t_draft_s, 0.0)
                     if stats.catchup_tokens > 1 else 0.0)
        catchup_j = catchup_s * m.e_draft_j / max(m.t_draft_s, 1e-9)
        time_s = max(stats.round_s - catchup_s, 1e-9)
        energy_j = stats.energy_j - catchup_j
        self._account(stats.produced, stats.round_s, stats.energy_j)
        if stats.drafted and self._pos >= self.OPENING_TOKENS:  # the opening is apart
            self._realized["draft"].add(stats.produced,
                                        self._net_j(energy_j, time_s, stats.produced), time_s)
            self._pending = 0
        self.est.observe(
            drafted=stats.drafted, accepted=stats.accepted, draft_s=stats.draft_s,
            rtt_s=stats.rtt_s, verify_s=stats.verify_s, round_s=stats.round_s,
            energy_j=stats.energy_j, draft_energy_j=stats.draft_energy_j,
            catchup_tokens=stats.catchup_tokens, queue_s=stats.queue_s,
            batch_tokens=stats.batch_tokens, predrafted=stats.predrafted,
            ahead_s=stats.ahead_s, ahead_energy_j=stats.ahead_energy_j, sync_s=stats.sync_s,
            opening=self._pos < self.OPENING_TOKENS,
        )
        self._pos += stats.produced
        feats = stats.features or [self._features(j, h, None)
                                   for j, h in enumerate(stats.entropies)]
        self.acceptance.observe_round(feats, stats.accepted)
        self.rounds += 1
        self._plan_age += 1
        self._explore = None
        self.q_sum += self.q_j

    def describe(self) -> dict[str, object]:
        prior_mse, learned_mse = self.acceptance.brier()
        out: dict[str, object] = {
            "V": self.v,
            "cap": self.cap,
            "queue_j": self.q_j,
            "mean_queue_j": self.q_sum / self.rounds if self.rounds else 0.0,
            "mean_reference_budget": self.b_sum / self.rounds if self.rounds else None,
            "streamed_tokens": self.streamed,
            "stretches": self.stretches,
            "stretches_on_edge_advice": self.advised,
            "explored": self.explored,
            "ahead_rounds": self.ahead_rounds,
            "ahead_drafted": self.ahead_drafted,
            "ahead_hits": self.ahead_hits,
            "acceptance_estimate": self.est.a.value,
            # None until an outcome was judged (strict JSON has no NaN)
            "acceptance_brier_prior": prior_mse if math.isfinite(prior_mse) else None,
            "acceptance_brier_learned": learned_mse if math.isfinite(learned_mse) else None,
            "acceptance_calibration": self.acceptance.calibration(),
        }
        if self.budget is not None:
            out["budget"] = {"power_w": self.budget.power_w,
                             "j_per_token": self.budget.j_per_token}
        return out


__all__ = ["DEFAULT_V", "GelatoPolicy"]
