"""Acceptance traces: what a draft/target pair does, position by position, recorded once.

A trace follows the target's greedy continuation of each prompt. At every position i it holds

- ``entropy[i]``: the draft's next-token entropy at temperature 1 (nats), given the target's
  prefix; this is what ``DraftStream`` hands the policies at temperature 0;
- ``match[i]``: whether the draft's argmax equals the target's (greedy acceptance);
- optionally, for a sampling temperature T > 0, ``entropy_t[i]`` (the draft's entropy at T) and
  ``p_accept[i]`` = sum_x min(p(x), q(x)), the probability that a token sampled from the
  top-k-truncated draft q is accepted by the target p (both at T): the expectation of
  min(1, p/q) under q (Leviathan et al. 2023, section 3.2);
- optionally (traces recorded since they were added; None in older files) ``top1[i]``, the
  draft's largest next-token probability, and ``margin[i]``, top1 minus the second largest, both
  at temperature 1 like ``entropy``, and, when sampling, ``top1_t[i]`` and ``margin_t[i]`` at T
  like ``entropy_t``: the features of ``ondevice.llm.acceptance``.

At temperature 0 the trace is exact for any drafting schedule: accepted tokens are the target's,
so generation never leaves the greedy path. At T > 0 a rejection would leave it; the simulator
keeps following the recorded path (an approximation stated in docs/gelato.md).

Recording runs the two models in lockstep, one token at a time, through the project's runtime
(``LlamaModel``/``LlamaRunner``), as a device drafts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ondevice.common import jsonout
from ondevice.common.speculative import GREEDY_EPS, entropy_nats, softmax
from ondevice.llm.acceptance import top_two

TRACE_VERSION = 1  # arrays added since (top1, margin, ...) are optional: absent ones load as None
FEATURE_FIELDS = ("top1", "margin", "top1_t", "margin_t")  # optional [N] float32 arrays

# Ten varied prompts: narrative, technical, code, list, dialogue, arithmetic, definitions.
# Drafts agree with targets very differently across such kinds of text, which is the point.
DEFAULT_PROMPTS: tuple[str, ...] = (
    "The three most useful things to know about batteries are",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Once upon a time, in a small village by the sea, there lived",
    "Q: What is the capital of France?\nA:",
    "Photosynthesis is the process by which plants",
    "1, 2, 3, 4, 5, 6, 7, 8,",
    "To install the package, run the following command:",
    "The quick brown fox jumps over the lazy dog. The quick brown fox",
    "Dear hiring manager, I am writing to apply for the position of",
    "In machine learning, overfitting happens when a model",
)


@dataclass(slots=True)
class Trace:
    """Per-position records of several prompts, concatenated; prompt p owns positions
    ``offsets[p]:offsets[p + 1]``."""

    entropy: np.ndarray  # [N] float32, nats at T = 1
    match: np.ndarray  # [N] bool, draft argmax == target argmax
    offsets: np.ndarray  # [P + 1] int64
    tokens: np.ndarray  # [N] int32, the target's greedy tokens
    prompt_tokens: np.ndarray  # [P] int32, prompt lengths
    entropy_t: np.ndarray | None = None  # [N] float32, nats at ``temperature``
    p_accept: np.ndarray | None = None  # [N] float32, acceptance probability at ``temperature``
    meta: dict[str, Any] = field(default_factory=dict)
    top1: np.ndarray | None = None  # [N] float32, draft's largest probability at T = 1
    margin: np.ndarray | None = None  # [N] float32, top1 minus the second largest, T = 1
    top1_t: np.ndarray | None = None  # [N] float32, as top1 at ``temperature``
    margin_t: np.ndarray | None = None  # [N] float32, as margin at ``temperature``

    def __post_init__(self) -> None:
        n = int(self.offsets[-1]) if len(self.offsets) else 0
        if len(self.offsets) < 2 or self.offsets[0] != 0 or np.any(np.diff(self.offsets) < 0):
            raise ValueError("offsets must start at 0, be non-decreasing, and have P + 1 entries")
        for name in ("entropy", "match", "tokens"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} must have shape ({n},)")
        for name in ("entropy_t", "p_accept", *FEATURE_FIELDS):
            arr = getattr(self, name)
            if arr is not None and arr.shape != (n,):
                raise ValueError(f"{name} must have shape ({n},)")
        if self.prompt_tokens.shape != (len(self.offsets) - 1,):
            raise ValueError("prompt_tokens needs one entry per prompt")

    @property
    def n_prompts(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_positions(self) -> int:
        return int(self.offsets[-1])

    @property
    def temperature(self) -> float:
        return float(self.meta.get("temperature", 0.0))

    def prompt_slice(self, p: int) -> slice:
        return slice(int(self.offsets[p]), int(self.offsets[p + 1]))

    def features(self, sampling: bool) -> tuple[np.ndarray, np.ndarray] | None:
        """``(top1, margin)``, ``[N]`` each, at the temperature the policies see (T = 1 when
        greedy, the trace's T when sampling, as ``entropy``/``entropy_t``); None when the trace
        lacks them (recorded before they existed)."""
        top1, margin = (self.top1_t, self.margin_t) if sampling else (self.top1, self.margin)
        if top1 is None or margin is None:
            return None
        return top1, margin

    def greedy_acceptance(self) -> float:
        """Fraction of positions where the draft's argmax is the target's."""
        return float(self.match.mean()) if self.n_positions else float("nan")

    @classmethod
    def from_prompts(
        cls, entropies: Sequence[Sequence[float]], matches: Sequence[Sequence[bool]], *,
        p_accept: Sequence[Sequence[float]] | None = None, meta: dict[str, Any] | None = None,
        top1: Sequence[Sequence[float]] | None = None,
        margin: Sequence[Sequence[float]] | None = None,
    ) -> Trace:
        """Build a trace from per-prompt lists (hand-made traces in tests and examples). With
        ``p_accept`` it is a sampling trace whose T-quantities (``entropy_t``, and ``top1_t``
        and ``margin_t`` if given) are the T = 1 ones."""
        lens = [len(e) for e in entropies]
        if [len(m) for m in matches] != lens:
            raise ValueError("entropies and matches differ in length")
        if (top1 is None) != (margin is None):
            raise ValueError("give both top1 and margin, or neither")
        offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        n = int(offsets[-1])

        def cat(rows: Sequence[Sequence[float]], dtype: type) -> np.ndarray:
            return np.concatenate([np.asarray(r, dtype=dtype) for r in rows]) if n else (
                np.zeros(0, dtype=dtype))

        meta = dict(meta or {})
        pa = None
        if p_accept is not None:
            pa = cat(p_accept, np.float32)
            meta.setdefault("temperature", 1.0)
        t1 = cat(top1, np.float32) if top1 is not None else None
        mg = cat(margin, np.float32) if margin is not None else None
        return cls(
            entropy=cat(entropies, np.float32), match=cat(matches, bool), offsets=offsets,
            tokens=np.zeros(n, dtype=np.int32),
            prompt_tokens=np.ones(len(lens), dtype=np.int32),
            entropy_t=cat(entropies, np.float32) if pa is not None else None,
            p_accept=pa, meta=meta, top1=t1, margin=mg,
            top1_t=t1 if pa is not None else None, margin_t=mg if pa is not None else None,
        )

    # -- files ------------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write an ``.npz`` (arrays plus the metadata as a JSON string)."""
        arrays: dict[str, np.ndarray] = {
            "entropy": self.entropy, "match": self.match, "offsets": self.offsets,
            "tokens": self.tokens, "prompt_tokens": self.prompt_tokens,
            "meta": np.array(jsonout.dumps({"version": TRACE_VERSION, **self.meta})),
        }
        if self.entropy_t is not None:
            arrays["entropy_t"] = self.entropy_t
        if self.p_accept is not None:
            arrays["p_accept"] = self.p_accept
        for name in FEATURE_FIELDS:
            arr = getattr(self, name)
            if arr is not None:
                arrays[name] = arr
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as fh:  # np.savez would append ".npz" to a path without it
            np.savez_compressed(fh, **arrays)

    @classmethod
    def load(cls, path: Path) -> Trace:
        with np.load(Path(path), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("version") != TRACE_VERSION:
                raise ValueError(f"{path}: trace version {meta.get('version')}, expected "
                                 f"{TRACE_VERSION}")
            return cls(
                entropy=z["entropy"], match=z["match"].astype(bool), offsets=z["offsets"],
                tokens=z["tokens"], prompt_tokens=z["prompt_tokens"],
                entropy_t=z["entropy_t"] if "entropy_t" in z.files else None,
                p_accept=z["p_accept"] if "p_accept" in z.files else None,
                meta=meta,
                **{name: z[name] if name in z.files else None for name in FEATURE_FIELDS},
            )


# The shipped traces: one per prompt set, each recorded from the demo's Gemma 3 270M Q4_K_M
# target and its Q2_K requantized draft, 128 tokens per prompt at T = 0.8 (so each replays
# greedy and sampled acceptance). "mixed" is DEFAULT_PROMPTS, the set GELATO's constants were
# tuned on (TUNING_SET); the others are held out: nothing of the controller was fitted to them.
TUNING_SET = "mixed"
PROMPT_SETS: tuple[str, ...] = ("mixed", "stories", "instructions", "code", "facts")
TRACE_FILE = "gemma-3-270m-{}.npz"


def prompt_set(name: str) -> tuple[str, ...]:
    """The prompts of a shipped prompt set (``PROMPT_SETS``); ValueError for another name."""
    if name == "mixed":
        return DEFAULT_PROMPTS
    if name not in PROMPT_SETS:
        raise ValueError(f"unknown prompt set {name!r}; shipped: {', '.join(PROMPT_SETS)}")
    from importlib import resources

    entry = resources.files("ondevice.bench").joinpath("prompts", f"{name}.json")
    return tuple(json.loads(entry.read_text()))


def shipped_trace(name: str = TUNING_SET) -> Path:
    """The trace of a shipped prompt set (``ondevice/bench/traces/``); the tuning set's by
    default. ValueError for an unknown set."""
    from importlib import resources

    if name not in PROMPT_SETS:
        raise ValueError(f"no shipped trace {name!r}; shipped: {', '.join(PROMPT_SETS)}")
    entry = resources.files("ondevice.bench").joinpath("traces", TRACE_FILE.format(name))
    return Path(str(entry))


def shipped_traces() -> dict[str, Path]:
    """Every shipped trace by prompt set, the tuning set first."""
    return {name: shipped_trace(name) for name in PROMPT_SETS}


def resolve_traces(specs: Sequence[str]) -> dict[str, Path]:
    """Traces to replay, by name: each spec is a shipped prompt set, ``all`` (every shipped
    trace) or a path to an ``.npz`` (named by its stem). No spec: every shipped trace."""
    out: dict[str, Path] = {}
    for spec in specs or ["all"]:
        if spec == "all":
            out.update(shipped_traces())
        elif spec in PROMPT_SETS:
            out[spec] = shipped_trace(spec)
        else:
            path = Path(spec)
            if not path.is_file():
                raise ValueError(f"--trace {spec}: neither a file nor a shipped prompt set "
                                 f"({', '.join(PROMPT_SETS)}, all)")
            out[path.stem] = path
    return out


def load_prompts(path: Path) -> list[str]:
    """Prompts from a file: a JSON list of strings, or one prompt per non-empty line
    (``\\n`` inside a line stands for a newline)."""
    text = Path(path).read_text()
    if text.lstrip().startswith("["):
        prompts = json.loads(text)
        if not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"{path}: a JSON prompt file must hold a list of strings")
    else:
        prompts = [ln.replace("\\n", "\n") for ln in text.splitlines() if ln.strip()]
    if not prompts:
        raise ValueError(f"{path} holds no prompts")
    return prompts


def acceptance_probability(
    target_logits: np.ndarray, draft_logits: np.ndarray, temperature: float, top_k: int
) -> float:
    """sum_x min(p(x), q(x)) for p = softmax(target / T) and q the top-k truncation of
    softmax(draft / T): the chance a token drafted from q survives verification.
    ``[vocab], [vocab] -> float``."""
    p = softmax(target_logits, temperature)  # [vocab]
    k = min(top_k, draft_logits.shape[0])
    ids = np.argpartition(draft_logits, -k)[-k:]  # [k]
    q = softmax(draft_logits[ids], temperature)  # [k]
    return float(np.minimum(p[ids], q).sum())


@dataclass
class _Recording:
    """A trace's per-position columns as they are recorded (module doc: what each holds), and
    the one-token evaluation times (seconds) of both models."""

    temperature: float
    top_k: int
    entropy: list[float] = field(default_factory=list)
    entropy_t: list[float] = field(default_factory=list)
    top1: list[float] = field(default_factory=list)
    margin: list[float] = field(default_factory=list)
    top1_t: list[float] = field(default_factory=list)
    margin_t: list[float] = field(default_factory=list)
    p_accept: list[float] = field(default_factory=list)
    match: list[bool] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=lambda: [0])
    prompt_tokens: list[int] = field(default_factory=list)
    target_s: float = 0.0
    draft_s: float = 0.0
    n_evals: int = 0

    @property
    def sampling(self) -> bool:
        """Whether the columns at the sampling temperature are recorded."""
        return self.temperature > GREEDY_EPS

    def add(self, p_logits: np.ndarray, q_logits: np.ndarray, tok: int) -> None:
        """Append one position: the target chose `tok` from `p_logits` ``[vocab]``, the draft
        saw `q_logits` ``[vocab]`` at the same prefix."""
        q1 = softmax(q_logits, 1.0)  # [vocab]
        self.entropy.append(entropy_nats(q1))
        top1, margin = top_two(q1)
        self.top1.append(top1)
        self.margin.append(margin)
        self.match.append(int(np.argmax(q_logits)) == tok)
        if self.sampling:
            qt = softmax(q_logits, self.temperature)  # [vocab]
            self.entropy_t.append(entropy_nats(qt))
            top1, margin = top_two(qt)
            self.top1_t.append(top1)
            self.margin_t.append(margin)
            self.p_accept.append(
                acceptance_probability(p_logits, q_logits, self.temperature, self.top_k))
        self.tokens.append(tok)

    def trace(self, meta: dict[str, Any]) -> Trace:
        """The recorded columns as a Trace with `meta`; the sampled ones only when sampling."""
        sampled = self.sampling
        return Trace(
            entropy=np.asarray(self.entropy, dtype=np.float32),
            match=np.asarray(self.match, dtype=bool),
            offsets=np.asarray(self.offsets, dtype=np.int64),
            tokens=np.asarray(self.tokens, dtype=np.int32),
            prompt_tokens=np.asarray(self.prompt_tokens, dtype=np.int32),
            entropy_t=np.asarray(self.entropy_t, dtype=np.float32) if sampled else None,
            p_accept=np.asarray(self.p_accept, dtype=np.float32) if sampled else None,
            meta=meta,
            top1=np.asarray(self.top1, dtype=np.float32),
            margin=np.asarray(self.margin, dtype=np.float32),
            top1_t=np.asarray(self.top1_t, dtype=np.float32) if sampled else None,
            margin_t=np.asarray(self.margin_t, dtype=np.float32) if sampled else None,
        )


def _follow_prompt(target: Any, draft: Any, ids: list[int], room: int, rec: _Recording,
                   progress: Callable[[int], None] | None) -> None:
    """Decode the target's greedy continuation of the prompt `ids` for up to `room` positions
    (or to an end-of-generation token) with the draft (LlamaRunners) beside it, adding every
    position and one-token evaluation time to `rec` and ending its prompt there."""
    target.truncate(0)
    draft.truncate(0)
    feed = ids
    for _ in range(room):
        t0 = time.perf_counter()
        p_logits = target.eval(feed, 1)[0]  # [vocab]
        t1 = time.perf_counter()
        q_logits = draft.eval(feed, 1)[0]  # [vocab]
        t2 = time.perf_counter()
        if len(feed) == 1:
            rec.target_s += t1 - t0
            rec.draft_s += t2 - t1
            rec.n_evals += 1
        tok = int(np.argmax(p_logits))
        if target.model.is_eog(tok):
            break
        rec.add(p_logits, q_logits, tok)
        feed = [tok]
        if progress is not None:
            progress(1)
    rec.offsets.append(len(rec.tokens))
    rec.prompt_tokens.append(len(ids))


def record_trace(
    target_path: Path, draft_path: Path, prompts: Sequence[str], *, max_tokens: int = 128,
    temperature: float = 0.0, top_k: int = 32, n_threads: int = 1, n_ctx: int = 1024,
    progress: Callable[[int], None] | None = None,
) -> Trace:
    """Run target and draft in lockstep along the target's greedy continuation of every prompt.

    Stops a prompt at ``max_tokens`` positions or at an end-of-generation token. ``progress``
    is called with 1 after every position. Raises ValueError if the vocabularies differ.
    Measured per-token evaluation times (ms, this machine) go into the metadata.
    """
    from ondevice.common.llama_runtime import LlamaConfig, LlamaModel, LlamaRunner

    cfg = LlamaConfig(n_ctx=n_ctx, n_threads=n_threads)
    rec = _Recording(temperature=temperature, top_k=top_k)
    with LlamaModel(target_path) as tm, LlamaModel(draft_path) as dm:
        if tm.vocab_hash() != dm.vocab_hash():
            raise ValueError(f"{draft_path} and {target_path} have different vocabularies")
        with LlamaRunner(tm, cfg) as tr, LlamaRunner(dm, cfg) as dr:
            for prompt in prompts:
                ids = tm.tokenize(prompt)
                room = min(max_tokens, n_ctx - len(ids) - 1)
                if room <= 0:
                    raise ValueError(f"prompt of {len(ids)} tokens does not fit n_ctx {n_ctx}")
                _follow_prompt(tr, dr, ids, room, rec, progress)
            vocab_hash = tm.vocab_hash()
    n_evals = rec.n_evals
    meta = {
        "target": Path(target_path).name, "draft": Path(draft_path).name,
        "vocab_hash": vocab_hash, "prompts": list(prompts), "max_tokens": max_tokens,
        "temperature": temperature if rec.sampling else 0.0, "top_k": top_k,
        "n_threads": n_threads,
        "target_ms_per_token": rec.target_s / n_evals * 1e3 if n_evals else None,
        "draft_ms_per_token": rec.draft_s / n_evals * 1e3 if n_evals else None,
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return rec.trace(meta)
