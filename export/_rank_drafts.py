"""Rank draft models for a target by their expected speculative speedup, measured here.

For each draft, on this machine, with the project's own runtime (ondevice.common.llama_runtime) and
rejection sampler (ondevice.common.speculative):

- acceptance ``a``: speculative decoding of every prompt with a fixed draft length (``gamma``)
  at temperature 0 (greedy) and 0.8; the draft proposes from its top-k-truncated distribution
  (`top_k_proposal`), the target accepts or rejects with `verify` (min(1, p/q), residual
  resampling), exactly as in a live session. Assuming each drafted token is accepted
  independently with probability a (the model behind N(b) in docs/export-llm.md), the maximum
  likelihood estimate is ``a = accepted / (accepted + rounds that ended in a rejection)``;
- ``t_draft``: seconds per drafted token (a one-token decode plus the proposal), the median
  over the run;
- ``t_eval(m)``: the target's time to decode a batch of m tokens with logits for all m,
  m = 1..max_b + 1: the median over a sweep before and a sweep after the drafts (3 repeats
  each) and every verification batch of that size in the runs, so load that changes while the
  command runs affects target and drafts alike and one preempted run does not count; then made
  non-decreasing in m (`monotone_timings`). The cost is not linear in m: one row is a
  memory-bound matrix-vector product, several rows share each weight load. ``t_row``: the time
  `verify` spends per produced token (a softmax over the vocabulary when sampling).

The expected speed at drafting length b (docs/export-llm.md, rank-drafts) is N(b) / T(b) with

    N(b) = (1 - a^(b+1)) / (1 - a)                     tokens produced per round
    T(b) = b * t_draft + t_net + t_verify(b)           seconds per round
    t_verify(b) = t_eval(b + 1) + N(b) * t_row          one batch of b + 1, rows examined

t_net is the link's round-trip time (``--rtt-ms``); payload transfer is neglected (top-k ids and
probabilities: a few hundred bytes per drafted token). The best b in 1..max_b is reported, and
the speedup is relative to the target generating alone, token by token, streamed to the device:
``speedup = (N(b) / T(b)) * (t_eval(1) + t_row)``. Draft and target both run on this machine,
so the figures compare drafts with each other; on a real device-edge pair the draft runs on the
slower device and the target on the faster edge.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from export._check_pair import check_pair
from export._errors import ExportError
from export._paths import check_output_file
from export._progress import show_progress
from export._table import format_columns
from ondevice.common import jsonout

TEMPERATURES = (0.0, 0.8)
DEFAULT_PROMPTS = (
    "The river behind the old mill",
    "In the morning the market opens early, and",
    "Here is a short story about a lighthouse keeper:",
    "The three most important things to know about bread are",
    "Good tools make good work because",
    "def fibonacci(n):",
    "Question: Why is the sky blue?\nAnswer:",
    "The train left the station at noon and",
)
DEFAULT_GAMMA = 4  # drafted tokens per measurement round (ondevice's default --gamma)
DEFAULT_TOP_K = 32  # support of the truncated draft distribution (ondevice's --top-k default)
DEFAULT_MAX_B = 16  # the drafting-length cap (docs/gelato.md)
_TIMING_REPEATS = 3


# -- the model (pure) ---------------------------------------------------------------------------


def expected_tokens(a: float, b: int) -> float:
    """N(b) = (1 - a^(b+1)) / (1 - a): expected tokens per round with b drafted tokens, each
    accepted independently with probability a (1 bonus or correction token included)."""
    if not 0.0 <= a <= 1.0 or b < 0:
        raise ValueError(f"need 0 <= a <= 1 and b >= 0, got a={a}, b={b}")
    if a == 1.0:
        return float(b + 1)
    return (1.0 - a ** (b + 1)) / (1.0 - a)


def round_seconds(
    a: float, b: int, t_draft_s: float, t_net_s: float, t_eval_s: Sequence[float], t_row_s: float
) -> float:
    """T(b) = b*t_draft + t_net + t_eval(b+1) + N(b)*t_row, in seconds.

    `t_eval_s[m - 1]` is the target's time to decode m tokens in one batch (m = 1..len).
    """
    if b + 1 > len(t_eval_s):
        raise ValueError(f"no target timing for a batch of {b + 1} tokens")
    return b * t_draft_s + t_net_s + t_eval_s[b] + expected_tokens(a, b) * t_row_s


def monotone_timings(measured_s: Sequence[float]) -> list[float]:
    """The non-decreasing sequence closest to `measured_s` in least squares (isotonic
    regression, pool-adjacent-violators): a bigger batch never costs less. Pure; ``[n] -> [n]``.
    """
    blocks: list[list[float]] = []  # [sum, count] of pooled runs
    for v in measured_s:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    out: list[float] = []
    for total, count in blocks:
        out += [total / count] * int(count)
    return out


@dataclass(frozen=True)
class Expected:
    """The best drafting length and what it gives: tokens/s and speedup over the target alone."""

    b: int
    tokens_per_s: float
    speedup: float


def best_draft_length(
    a: float,
    t_draft_s: float,
    t_net_s: float,
    t_eval_s: Sequence[float],
    t_row_s: float,
    max_b: int,
) -> Expected:
    """argmax over b in 1..max_b of N(b)/T(b) (smallest b on ties), and its speedup against the
    target alone at 1 / (t_eval(1) + t_row) tokens/s. Pure."""
    if max_b < 1:
        raise ValueError(f"max_b must be >= 1, got {max_b}")
    best_b, best_rate = 1, -1.0
    for b in range(1, max_b + 1):
        rate = expected_tokens(a, b) / round_seconds(a, b, t_draft_s, t_net_s, t_eval_s, t_row_s)
        if rate > best_rate * (1.0 + 1e-12):
            best_b, best_rate = b, rate
    baseline = 1.0 / (t_eval_s[0] + t_row_s)
    return Expected(b=best_b, tokens_per_s=best_rate, speedup=best_rate / baseline)


def acceptance_mle(accepted: int, rejections: int) -> float:
    """Per-token acceptance from rounds of a fixed length: successes / (successes + failures),
    where each round contributes its accepted tokens and at most one rejection (censored at
    the round's end when all were accepted). 0 when nothing was observed."""
    n = accepted + rejections
    return accepted / n if n else 0.0


# -- measurement ----------------------------------------------------------------------------


@dataclass
class Acceptance:
    """Counts and timings of one draft at one temperature (times in seconds)."""

    temperature: float
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    rejections: int = 0
    produced: int = 0
    eval_s: list[float] = field(default_factory=list)  # one-token draft decodes
    # target batch size m -> seconds, for verification batches with logits for all m tokens
    target_eval_s: dict[int, list[float]] = field(default_factory=dict)
    propose_s: list[float] = field(default_factory=list)  # top_k_proposal calls
    verify_row_s: list[float] = field(default_factory=list)  # verify time / produced tokens

    @property
    def a(self) -> float:
        return acceptance_mle(self.accepted, self.rejections)

    @property
    def t_draft_s(self) -> float:
        return statistics.median(self.eval_s) + statistics.median(self.propose_s)

    @property
    def t_row_s(self) -> float:
        return statistics.median(self.verify_row_s)


def _sync(runner: Any, seq: list[int]) -> tuple[np.ndarray, int]:
    """Trim `runner`'s cache to its longest prefix agreeing with `seq`, decode the rest, and
    return the next-token logits after seq and how many tokens were decoded (as ondevice's
    DraftStream does)."""
    kv = runner.tokens
    i = 0
    while i < len(kv) and i < len(seq) and kv[i] == seq[i]:
        i += 1
    i = min(i, len(seq) - 1)  # re-evaluate the last token if everything is cached
    runner.truncate(i)
    return runner.eval(seq[i:], 1)[0], len(seq) - i


def measure_acceptance(
    draft: Any,
    target: Any,
    prompts: Sequence[list[int]],
    *,
    temperature: float,
    gamma: int,
    top_k: int,
    max_tokens: int,
    n_vocab: int,
    seed: int,
    on_prompt: Callable[[], None] | None = None,
) -> Acceptance:
    """Speculative decoding of each prompt with `draft` and `target` (LlamaRunner) at
    `temperature`, `gamma` tokens per round, until `max_tokens` are produced, an end-of-generation
    token, or the context is full. Logits are cut to the first `n_vocab` ids (the vocabulary the
    two share). Prompt i uses the seeded streams session_rng(seed + i, side)."""
    from ondevice.common.speculative import session_rng, top_k_proposal, verify

    stats = Acceptance(temperature=temperature)
    d_model, t_model = draft.model, target.model
    for i, prompt in enumerate(prompts):
        rng_d, rng_t = session_rng(seed + i, "draft"), session_rng(seed + i, "target")
        target.truncate(0)
        committed = list(prompt)
        if len(committed) > 1:
            target.eval(committed[:-1], 1)
        produced = 0
        while produced < max_tokens and len(committed) + gamma + 2 <= target.n_ctx:
            t0 = time.perf_counter()
            logits, n_synced = _sync(draft, committed)
            if n_synced == 1:  # a plain one-token decode: part of the per-token cost
                stats.eval_s.append(time.perf_counter() - t0)
            logits = logits[:n_vocab]  # [n_vocab]
            ids: list[int] = []
            q_ids: list[np.ndarray] = []
            q_probs: list[np.ndarray] = []
            for j in range(gamma):
                t0 = time.perf_counter()
                tok, sup, probs = top_k_proposal(logits, temperature, top_k, rng_d)
                stats.propose_s.append(time.perf_counter() - t0)
                ids.append(tok)
                q_ids.append(sup)
                q_probs.append(probs)
                if d_model.is_eog(tok) or j + 1 == gamma:
                    break
                t0 = time.perf_counter()
                logits = draft.eval([tok], 1)[0][:n_vocab]
                stats.eval_s.append(time.perf_counter() - t0)
            n = len(ids)
            k = max(len(s) for s in q_ids)
            qi = np.zeros((n, k), dtype=np.int32)  # [n, k]
            qp = np.zeros((n, k), dtype=np.float32)  # [n, k]
            for row, (sup, probs) in enumerate(zip(q_ids, q_probs, strict=True)):
                qi[row, : len(sup)] = sup
                qi[row, len(sup) :] = sup[0]  # padding ids carry probability 0
                qp[row, : len(probs)] = probs
            base = len(committed)
            pending = committed[target.n_past :]
            t0 = time.perf_counter()
            t_logits = target.eval(pending + ids, n + 1)[:, :n_vocab]  # [n + 1, n_vocab]
            if len(pending) == 1:  # a batch of n + 1 tokens, all with logits
                stats.target_eval_s.setdefault(n + 1, []).append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            accepted, token = verify(np.asarray(ids), qi, qp, t_logits, temperature, rng_t)
            stats.verify_row_s.append((time.perf_counter() - t0) / (accepted + 1))
            target.truncate(base + accepted)
            committed += [*ids[:accepted], token]
            stats.rounds += 1
            stats.drafted += n
            stats.accepted += accepted
            stats.rejections += accepted < n
            stats.produced += accepted + 1
            produced += accepted + 1
            if t_model.is_eog(token) or any(t_model.is_eog(t) for t in ids[:accepted]):
                break
        if on_prompt is not None:
            on_prompt()
    return stats


def target_timings(
    target: Any,
    prompt: list[int],
    max_m: int,
    repeats: int,
    on_sample: Callable[[], None] | None = None,
) -> dict[int, list[float]]:
    """Seconds for `target` (LlamaRunner) to decode a batch of m tokens with logits for all of
    them after `prompt`, `repeats` samples for each m = 1..max_m (the batch repeats the
    prompt's tokens; only its length matters). Sizes are interleaved within each repeat;
    `on_sample()` is called after each of the ``repeats * max_m`` batches."""
    target.truncate(0)
    target.eval(prompt, 1)
    base = target.n_past
    filler = (prompt * (max_m // len(prompt) + 1))[:max_m]
    out: dict[int, list[float]] = {m: [] for m in range(1, max_m + 1)}
    for _ in range(repeats):
        for m in range(1, max_m + 1):
            t0 = time.perf_counter()
            target.eval(filler[:m], m)
            out[m].append(time.perf_counter() - t0)
            target.truncate(base)
            if on_sample is not None:
                on_sample()
    return out


def batch_medians(
    sweeps: Sequence[dict[int, list[float]]], runs: Sequence[Acceptance]
) -> list[float]:
    """Median seconds of the target's batches of m = 1..n tokens, n the sizes the first sweep
    timed: over every sweep and every verification batch of that size in `runs`. Pure."""
    samples: dict[int, list[float]] = {m: [] for m in sweeps[0]}
    for timings in [*sweeps, *(r.target_eval_s for r in runs)]:
        for m, times in timings.items():
            if m in samples:
                samples[m].extend(times)
    return [statistics.median(samples[m]) for m in sorted(samples)]


def row_medians(runs: Sequence[Acceptance]) -> dict[float, float]:
    """Median `verify` seconds per produced token at each of TEMPERATURES, over all of `runs`.

    One cost per temperature for all drafts: it is the target's, not the draft's. Pure.
    """
    return {
        t: statistics.median(v for r in runs if r.temperature == t for v in r.verify_row_s)
        for t in TEMPERATURES
    }


# -- the table ------------------------------------------------------------------------------

_COLUMNS = ("#", "draft", "MiB", "tok/s", "a(T=0)", "a(T=0.8)", "b*", "speedup", "b*", "speedup")
_GROUPS = ((6, 8, "greedy"), (8, 10, "T=0.8"))  # [start, end) column spans and their titles
_MAX_LABEL = 48  # longer draft labels keep their last characters after a "~"


# -- the whole job --------------------------------------------------------------------------


@dataclass
class DraftRank:
    """One draft's measurements and expected performance per temperature."""

    path: Path
    size_bytes: int
    t_draft_s: float  # per drafted token at temperature 0 (decode + argmax)
    acceptance: dict[float, Acceptance]
    expected: dict[float, Expected]

    @property
    def tokens_per_s(self) -> float:
        """The draft alone, greedy: 1 / t_draft."""
        return 1.0 / self.t_draft_s


def draft_labels(paths: Sequence[Path]) -> dict[Path, str]:
    """Short unique labels: the file name, or as many trailing path parts as tell them apart."""
    for depth in range(1, max((len(p.parts) for p in paths), default=1) + 1):
        labels = {p: "/".join(p.parts[-depth:]) for p in paths}
        if len(set(labels.values())) == len(labels):
            return labels
    return {p: str(p) for p in paths}


@dataclass
class RankReport:
    """The ranked drafts and the common measurements (seconds)."""

    target: Path
    rtt_s: float
    t_eval_s: list[float]  # what the model uses, batches of 1..max_b+1 (monotone)
    t_eval_measured_s: list[float]  # the medians as measured
    t_row_s: dict[float, float]
    n_prompts: int
    max_tokens: int
    gamma: int
    top_k: int
    rank_by: float
    drafts: list[DraftRank]

    def table(self) -> str:
        """The ranking as a fixed-width text table with a header line and a footnote."""
        t1 = {t: (self.t_eval_s[0] + self.t_row_s[t]) * 1e3 for t in TEMPERATURES}
        head = (
            f"target {self.target.name}: {t1[0.0]:.2f} ms/token greedy, {t1[0.8]:.2f} ms/token "
            f"at T=0.8; RTT {self.rtt_s * 1e3:g} ms; acceptance from {self.n_prompts} prompts "
            f"x {self.max_tokens} tokens, gamma {self.gamma}, top-k {self.top_k}"
        )
        labels = draft_labels([d.path for d in self.drafts])
        rows = []
        for i, d in enumerate(self.drafts, 1):
            g, s = d.expected[0.0], d.expected[0.8]
            label = labels[d.path]
            rows.append(
                [
                    str(i),
                    label if len(label) <= _MAX_LABEL else "~" + label[1 - _MAX_LABEL :],
                    f"{d.size_bytes / 2**20:.1f}",
                    f"{d.tokens_per_s:.1f}",
                    f"{d.acceptance[0.0].a:.3f}",
                    f"{d.acceptance[0.8].a:.3f}",
                    str(g.b),
                    f"{g.speedup:.2f}x",
                    str(s.b),
                    f"{s.speedup:.2f}x",
                ]
            )
        lines = [head, *format_columns(_COLUMNS, rows, left={1}, groups=_GROUPS)]
        by = "greedy" if self.rank_by == 0.0 else "T=0.8"
        lines.append(
            f"ranked by expected speedup ({by}) over the target alone; b*: best drafting length; "
            "N(b)=(1-a^(b+1))/(1-a), T(b)=b*t_draft+t_net+t_verify(b)"
        )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """Everything measured, JSON-ready (seconds; acceptance per temperature as strings)."""

        def acc(a: Acceptance) -> dict[str, Any]:
            d = asdict(a)
            for key in ("eval_s", "propose_s", "verify_row_s", "target_eval_s"):
                del d[key]
            return {**d, "a": a.a, "t_draft_s": a.t_draft_s, "t_row_s": a.t_row_s}

        return {
            "target": str(self.target),
            "rtt_s": self.rtt_s,
            "t_eval_s": self.t_eval_s,
            "t_eval_measured_s": self.t_eval_measured_s,
            "t_row_s": {str(t): v for t, v in self.t_row_s.items()},
            "n_prompts": self.n_prompts,
            "max_tokens": self.max_tokens,
            "gamma": self.gamma,
            "top_k": self.top_k,
            "rank_by_temperature": self.rank_by,
            "drafts": [
                {
                    "rank": i,
                    "path": str(d.path),
                    "size_bytes": d.size_bytes,
                    "tokens_per_s": d.tokens_per_s,
                    "acceptance": {str(t): acc(a) for t, a in d.acceptance.items()},
                    "expected": {str(t): asdict(e) for t, e in d.expected.items()},
                }
                for i, d in enumerate(self.drafts, 1)
            ],
        }


def read_prompts(path: Path) -> list[str]:
    """Prompts from a UTF-8 text file, one per line; blank lines and lines starting with '#'
    are skipped; a literal backslash-n in a line stands for a newline. ExportError if the
    file is missing, unreadable or holds no prompt."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ExportError(f"prompt file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ExportError(f"cannot read prompt file {path}: {e}") from e
    prompts = [
        line.replace("\\n", "\n")
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not prompts:
        raise ExportError(f"prompt file {path} holds no prompt (one per line, # for comments)")
    return prompts


def _check_options(
    draft_paths: Sequence[Path],
    rtt_ms: float,
    max_tokens: int,
    gamma: int,
    top_k: int,
    max_b: int,
    rank_by: float,
) -> None:
    """Raise ExportError, naming the option, for no draft or an out-of-range number."""
    if not draft_paths:
        raise ExportError("rank-drafts needs at least one draft")
    if gamma < 1 or max_b < 1 or max_tokens < 1 or top_k < 1:
        raise ExportError("--gamma, --max-b, --max-tokens and --top-k must be >= 1")
    if not (rtt_ms >= 0 and math.isfinite(rtt_ms)):
        raise ExportError(f"--rtt-ms must be a finite number >= 0, got {rtt_ms}")
    if rank_by not in TEMPERATURES:
        raise ExportError(f"can rank by temperature 0 or 0.8, not {rank_by}")


def _check_drafts(
    target_path: Path,
    draft_paths: Sequence[Path],
    announce: Callable[[str], None] | None,
    show: bool,
) -> None:
    """Raise ExportError with the first mismatch for a draft that fails check_pair."""
    for p in draft_paths:
        pair = check_pair(p, target_path, announce, progress=show)
        if not pair.valid:
            raise ExportError(f"{p} cannot draft for {target_path}: {pair.mismatches[0]}")


def _sweep(
    target: Any, prompt: list[int], max_b: int, desc: str, show: bool
) -> dict[int, list[float]]:
    """`target_timings` for batches of 1..max_b+1, with a progress bar titled `desc`."""
    from tqdm import tqdm

    n = (max_b + 1) * _TIMING_REPEATS
    with tqdm(total=n, desc=desc, unit="batch", disable=not show, file=sys.stderr) as bar:
        return target_timings(target, prompt, max_b + 1, _TIMING_REPEATS, bar.update)


def _measure_draft(
    path: Path,
    target: Any,
    encoded: Sequence[list[int]],
    cfg: Any,
    measure: Callable[..., Acceptance],
    show: bool,
    announce: Callable[[str], None] | None,
) -> dict[float, Acceptance]:
    """Load the draft at `path` with `cfg` (LlamaConfig) and measure its acceptance against
    `target` (LlamaRunner) on the prompts `encoded` at each of TEMPERATURES, in that order, with
    `measure` (`measure_acceptance` with the round settings bound); ExportError if llama.cpp
    cannot load it."""
    from tqdm import tqdm

    from ondevice.common.llama_runtime import LlamaError, LlamaModel, LlamaRunner

    try:
        d_model = LlamaModel(path)
    except LlamaError as e:
        raise ExportError(f"draft {path} does not load in llama.cpp: {e}") from e
    accs: dict[float, Acceptance] = {}
    with d_model, LlamaRunner(d_model, cfg) as draft:
        n_vocab = min(d_model.n_vocab, target.model.n_vocab)
        for temp in TEMPERATURES:
            if announce is not None:
                announce(f"measuring {path.name} at T={temp:g}")
            with tqdm(
                total=len(encoded),
                desc=f"{path.name} T={temp:g}",
                unit="prompt",
                disable=not show,
                file=sys.stderr,
            ) as bar:
                accs[temp] = measure(
                    draft,
                    target,
                    encoded,
                    temperature=temp,
                    n_vocab=n_vocab,
                    on_prompt=lambda b=bar: b.update(1),
                )
    return accs


def _draft_rank(
    path: Path,
    accs: dict[float, Acceptance],
    t_eval_s: Sequence[float],
    t_row_s: dict[float, float],
    t_net_s: float,
    max_b: int,
) -> DraftRank:
    """The draft at `path` with its best drafting length per temperature (`best_draft_length`)."""
    expected = {
        temp: best_draft_length(acc.a, acc.t_draft_s, t_net_s, t_eval_s, t_row_s[temp], max_b)
        for temp, acc in accs.items()
    }
    return DraftRank(
        path=path,
        size_bytes=path.stat().st_size,
        t_draft_s=accs[0.0].t_draft_s,
        acceptance=accs,
        expected=expected,
    )


def rank_drafts(
    target_path: Path,
    draft_paths: Sequence[Path],
    *,
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    rtt_ms: float = 5.0,
    max_tokens: int = 48,
    gamma: int = DEFAULT_GAMMA,
    top_k: int = DEFAULT_TOP_K,
    max_b: int = DEFAULT_MAX_B,
    rank_by: float = 0.0,
    n_threads: int | None = None,
    seed: int = 0,
    progress: bool | None = None,
    announce: Callable[[str], None] | None = None,
) -> RankReport:
    """Measure every draft against the target and rank them (module docstring: the method).

    Drafts are ranked by expected speedup at temperature `rank_by` (0.0 or 0.8), then by the
    other temperature's. Every draft must pass check_pair against the target. Raises
    ExportError for missing or non-GGUF files, an incompatible draft (naming the first
    difference), bad numbers, or a model llama.cpp cannot load. Acceptance counts are
    deterministic for a given seed and thread count; timings are not.
    """
    from ondevice.common.llama_runtime import LlamaConfig, LlamaModel, LlamaRunner

    _check_options(draft_paths, rtt_ms, max_tokens, gamma, top_k, max_b, rank_by)
    target_path = Path(target_path)
    draft_paths = [Path(p) for p in draft_paths]
    show = show_progress(progress)
    _check_drafts(target_path, draft_paths, announce, show)
    with LlamaModel(target_path) as t_model:
        encoded = [t_model.tokenize(p) for p in prompts]
        if any(len(e) < 1 for e in encoded):
            raise ExportError("a prompt tokenizes to nothing")
        n_ctx = max(len(e) for e in encoded) + max_tokens + max(gamma, max_b) + 8
        n_batch = max(64, max_b + 1)
        cfg = LlamaConfig(n_ctx=n_ctx, n_batch=n_batch, n_threads=n_threads)
        with LlamaRunner(t_model, cfg) as target:
            if announce is not None:
                announce(f"timing the target's batches of 1..{max_b + 1} tokens")
            before = _sweep(target, encoded[0], max_b, "target batches", show)
            measure = partial(
                measure_acceptance, gamma=gamma, top_k=top_k, max_tokens=max_tokens, seed=seed
            )
            measured = [
                (path, _measure_draft(path, target, encoded, cfg, measure, show, announce))
                for path in draft_paths
            ]
            if announce is not None:
                announce("timing the target's batches again")
            after = _sweep(target, encoded[0], max_b, "target batches again", show)
    runs = [acc for _, accs in measured for acc in accs.values()]
    t_measured = batch_medians([before, after], runs)
    t_eval = monotone_timings(t_measured)
    t_row = row_medians(runs)
    ranks = [_draft_rank(p, accs, t_eval, t_row, rtt_ms / 1e3, max_b) for p, accs in measured]
    other = 0.8 if rank_by == 0.0 else 0.0
    ranks.sort(key=lambda r: (-r.expected[rank_by].speedup, -r.expected[other].speedup))
    return RankReport(
        target=target_path,
        rtt_s=rtt_ms / 1e3,
        t_eval_s=t_eval,
        t_eval_measured_s=t_measured,
        t_row_s=t_row,
        n_prompts=len(encoded),
        max_tokens=max_tokens,
        gamma=gamma,
        top_k=top_k,
        rank_by=rank_by,
        drafts=ranks,
    )


def write_json(report: RankReport, path: Path) -> None:
    """Write `report.to_json()` to `path` (sorted keys, 2-space indent); ExportError if `path`
    is a directory."""
    from ondevice.common.files import atomic_output

    check_output_file(Path(path), flag="--json", example="rank.json")
    with atomic_output(Path(path)) as tmp:
        tmp.write_text(jsonout.dumps(report.to_json(), indent=2, sort_keys=True) + "\n")
