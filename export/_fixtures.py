"""Tiny deterministic Llama-architecture GGUF models (a target and its draft) for tests.

`write_fixtures(out_dir, seed)` writes `target.gguf` (2 layers) and `draft.gguf` (1 layer), F32,
about 1.6 MB and 1.0 MB. They are not random noise: the weights are built by hand so that

- the output head reproduces a smoothed token-bigram table of a small English corpus
  (`_corpus.py`), factorized to rank 64, so sampling at temperature 1 has about 3 nats of
  entropy and greedy decoding wanders through English-like fragments;
- attention adds context. Layer 0: two positional heads attend to the previous token and to the
  one before it (RoPE phases set by hand), a content head with random query/key forms a soft bag
  of context, and a uniform head subtracts the mean "penalty vector" of the tokens seen so far,
  a soft repetition penalty that keeps greedy decoding out of short loops. Layer 1 (target only)
  adds random content heads and an FFN. Random parts write into a "context" subspace that the
  output head reads through a random matrix;
- the draft is the target's embedding, head and first layer with 3 % multiplicative weight
  noise: smaller and perturbed, it agrees with the target's greedy choice about 60 % of the time
  (docs/fixtures.md).

Residual stream layout (d_model = 128): dims 0-63 hold the token's bigram factor, 64-95 the
context, 96 a constant that drives the positional heads, 97 pads every embedding to the same
norm (so RMSNorm leaves a bare embedding unchanged), 98-127 the repetition-penalty subspace.

Everything is a pure function of the seed: the same seed gives byte-identical files on a given
numpy build (SVD and matrix products go through LAPACK/BLAS, whose rounding may differ between
builds); the tokenizer and the bigram table do not depend on the seed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np

from export import _bpe, _corpus
from export._errors import ExportError
from ondevice.common.files import atomic_output

# Vocabulary layout: ids 0-255 are the byte tokens (id == byte value), then the learned merges,
# then BOS and EOS. 384 in all keeps the output head small and a multiple of 32 (q4_0/q8_0 blocks).
N_MERGES = 126
BOS_ID = 256 + N_MERGES  # 382
EOS_ID = BOS_ID + 1  # 383
VOCAB_SIZE = EOS_ID + 1  # 384
BOS_TEXT = "<|startoftext|>"
EOS_TEXT = "<|endoftext|>"

# Residual-stream layout (see module docstring).
_BIGRAM = slice(0, 64)
_CONTEXT = slice(64, 96)
_CONST = 96
_PAD = 97
_PENALTY = slice(98, 128)
_RANK = _BIGRAM.stop - _BIGRAM.start

ROPE_FREQ_BASE = 10000.0
RMS_EPS = 1e-5

# Bigram table: add-alpha smoothing toward a floored unigram, a fixed EOS probability, BOS never
# predicted. With these the mean entropy at T=1 is about 3 nats and EOS ends roughly one
# 64-token sampled generation in ten.
_SMOOTH_ALPHA = 2.0
_UNIGRAM_FLOOR = 0.05  # pseudo-count per token, so unseen bytes stay reachable but rare
_P_EOS = 4e-4
_LOG_P_BOS = -14.0

# Hand-set attention: the constant dim has value _C0 in every embedding; positional heads put
# amplitude _POS_AMPLITUDE on the _POS_PAIRS highest-frequency RoPE pairs.
_C0 = 2.0
_POS_PAIRS = 4
_POS_AMPLITUDE = 2.9
_CONTENT_SCORE_STD = 1.5  # std of q.k/sqrt(head_dim) for the random content heads

# How strongly each part writes into the context subspace (per-dim std of its output), and how
# much the draft's weights are perturbed (relative, multiplicative). Tuned so the draft's greedy
# acceptance against the target is about 0.6 (tests/export/test_fixtures.py measures it).
_CTX_ATTN_L0 = 1.0
_CTX_FFN_L0 = 0.5
_CTX_ATTN_L1 = 0.3
_CTX_FFN_L1 = 0.6
_REPEAT_PENALTY = 2.0
_DRAFT_NOISE = 0.03


@dataclass(frozen=True)
class FixtureDims:
    """Hyperparameters of one fixture model (Llama architecture, GQA, SwiGLU FFN, RoPE NORM)."""

    n_layer: int
    d_model: int = 128
    n_head: int = 4
    n_head_kv: int = 2
    ffn: int = 256
    n_ctx_train: int = 2048

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


TARGET_DIMS = FixtureDims(n_layer=2)
DRAFT_DIMS = FixtureDims(n_layer=1)


@dataclass(frozen=True)
class Vocab:
    """A GPT-2 byte-level BPE vocabulary in the form GGUF stores it.

    `tokens[i]` is the text of id i (bytes-to-unicode form for normal tokens), `merges` the
    "left right" merge strings in priority order, `token_types` gguf.TokenType values.
    """

    tokens: tuple[str, ...]
    merges: tuple[str, ...]
    token_types: tuple[int, ...]
    bos_id: int = BOS_ID
    eos_id: int = EOS_ID


@functools.lru_cache(maxsize=1)
def build_vocab() -> tuple[Vocab, tuple[tuple[int, ...], ...]]:
    """The fixture vocabulary and the corpus paragraphs encoded with it (seed-independent)."""
    import gguf

    byte_map = _bpe.bytes_to_unicode()
    docs = _corpus.paragraphs()
    merges = _bpe.train_merges(docs, N_MERGES)
    if len(merges) != N_MERGES:
        raise RuntimeError(f"corpus yields only {len(merges)} merges, need {N_MERGES}")
    tokens = [byte_map[b] for b in range(256)] + [a + b for a, b in merges]
    if len(set(tokens)) != len(tokens):
        raise RuntimeError("duplicate token text in the fixture vocabulary")
    tokens += [BOS_TEXT, EOS_TEXT]
    types = [int(gguf.TokenType.NORMAL)] * (VOCAB_SIZE - 2) + [int(gguf.TokenType.CONTROL)] * 2
    token_ids = {t: i for i, t in enumerate(tokens)}
    encoded = tuple(tuple(_bpe.encode(doc, merges, token_ids)) for doc in docs)
    vocab = Vocab(
        tokens=tuple(tokens),
        merges=tuple(f"{a} {b}" for a, b in merges),
        token_types=tuple(types),
    )
    return vocab, encoded


def bigram_log_probs(docs: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """Smoothed log P(next | current) over the fixture vocabulary, rows sum to 1 in prob space.

    Each document is read as BOS, its tokens; no EOS is counted (EOS gets the fixed probability
    _P_EOS in every row instead, so greedy decoding never stops at a sentence end).
    Returns float64 [VOCAB_SIZE, VOCAB_SIZE].
    """
    counts = np.zeros((VOCAB_SIZE, VOCAB_SIZE))  # [cur, next]
    for doc in docs:
        seq = (BOS_ID, *doc)
        for cur, nxt in pairwise(seq):
            counts[cur, nxt] += 1.0
    unigram = counts.sum(axis=0) + _UNIGRAM_FLOOR  # [vocab]
    unigram[[BOS_ID, EOS_ID]] = 0.0
    unigram /= unigram.sum()
    probs = (counts + _SMOOTH_ALPHA * unigram) / (counts.sum(axis=1, keepdims=True) + _SMOOTH_ALPHA)
    probs *= 1.0 - _P_EOS  # [cur, next], rows sum to 1 - _P_EOS
    probs[:, EOS_ID] = _P_EOS
    logp = np.log(np.where(probs > 0.0, probs, 1.0))
    logp[:, BOS_ID] = _LOG_P_BOS
    return logp


def factorize(logits: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank-`rank` factors (A, B) with A @ B.T ~= logits - row means (softmax-invariant).

    logits: [n, m]; returns A [n, rank], B [m, rank], singular values split evenly.
    """
    centered = logits - logits.mean(axis=1, keepdims=True)  # [n, m]
    u, s, vt = np.linalg.svd(centered, full_matrices=False)
    # Fix the sign of each singular pair so the factors do not depend on LAPACK's choice.
    signs = np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(u.shape[1])])  # [min(n, m)]
    u, vt = u * signs, vt * signs[:, None]
    root = np.sqrt(s[:rank])
    return u[:, :rank] * root, vt[:rank].T * root


def _embedding(dims: FixtureDims, factor_a: np.ndarray) -> tuple[np.ndarray, float]:
    """Token embedding [vocab, d_model] with rms exactly 1 per row, and the factor scale k.

    Row x holds A[x] / k in the bigram dims, _C0 in the constant dim and a pad that brings the
    squared norm to d_model, so RMSNorm maps a bare embedding to itself.
    """
    d = dims.d_model
    norms = np.linalg.norm(factor_a, axis=1)  # [vocab]
    # Leave room for the constant and a positive pad in every row.
    k = float(norms.max() / np.sqrt(d - _C0**2 - 8.0))
    emb = np.zeros((VOCAB_SIZE, d))  # [vocab, d_model]
    emb[:, _BIGRAM] = factor_a / k
    emb[:, _CONST] = _C0
    emb[:, _PAD] = np.sqrt(d - _C0**2 - (norms / k) ** 2)
    return emb, k


def _penalty_mix(rng: np.random.Generator, emb: np.ndarray) -> np.ndarray:
    """Random map G [n_pen, rank] from a token's bigram factor to its penalty-readout row.

    Output-head row y reads the penalty subspace through G @ emb[y, bigram], so a vector there
    that is a mix of such rows lowers the logits of those tokens and of tokens with similar
    successors. Scaled so the rows have rms norm 1.
    """
    n_pen = _PENALTY.stop - _PENALTY.start
    mix = rng.normal(size=(n_pen, _RANK))  # [n_pen, rank]
    rows = emb[:, _BIGRAM] @ mix.T  # [vocab, n_pen]
    return mix / np.sqrt((rows**2).sum(axis=1).mean())


def _head(
    rng: np.random.Generator, emb: np.ndarray, factor_b: np.ndarray, k: float, mix: np.ndarray
) -> np.ndarray:
    """Output head [vocab, d_model].

    head @ emb[x] == A[x] @ B.T (the bigram logits); the context subspace is read through a
    random matrix (a unit context vector moves each logit by about 1 nat), the penalty subspace
    through G @ emb[y, bigram] per row y.
    """
    head = np.zeros_like(emb)  # [vocab, d_model]
    head[:, _BIGRAM] = factor_b * k
    n_ctx = _CONTEXT.stop - _CONTEXT.start
    head[:, _CONTEXT] = rng.normal(0.0, 1.0 / np.sqrt(n_ctx), size=(VOCAB_SIZE, n_ctx))
    head[:, _PENALTY] = emb[:, _BIGRAM] @ mix.T  # [vocab, n_pen]
    # Specials ignore context: EOS keeps its small fixed probability, BOS stays unreachable.
    head[[BOS_ID, EOS_ID], _CONTEXT.start :] = 0.0
    return head


def _rope_theta(dims: FixtureDims) -> np.ndarray:
    """Angular frequency of each RoPE pair (llama.cpp NORM mode): [head_dim / 2]."""
    hd = dims.head_dim
    return ROPE_FREQ_BASE ** (-np.arange(0, hd, 2) / hd)


def _attention(
    rng: np.random.Generator,
    dims: FixtureDims,
    normed: np.ndarray,
    *,
    out_std: float,
    positional_shifts: tuple[int, ...] = (),
    penalty: tuple[np.ndarray, float] | None = None,
) -> dict[str, np.ndarray]:
    """Q/K/V/O weights of one attention block (numpy layout [out, in]).

    normed: [vocab, d_model] typical RMS-normed inputs, used to set value and score scales.
    Query heads, in order: one positional head per entry of `positional_shifts` (KV group 0)
    that attends to the token that many positions back; then random content heads (random
    query/key over the bigram dims: a soft bag of context); with `penalty=(G, beta)` the last
    query head attends uniformly to the whole context, its KV group's values are G @ emb[bigram]
    and its output is -beta times that mean in the penalty subspace, so each token seen lowers
    the logit of itself and of tokens with similar successors (a soft repetition penalty).
    Random heads write the context subspace with per-dim std about `out_std`.
    """
    d, hd, nh, nkv = dims.d_model, dims.head_dim, dims.n_head, dims.n_head_kv
    group = nh // nkv
    n_ctx = _CONTEXT.stop - _CONTEXT.start

    wv = np.zeros((nkv * hd, d))  # [kv_heads * head_dim, d_model]
    wv[:, _BIGRAM] = rng.normal(size=(nkv * hd, _RANK))
    wv /= (normed @ wv.T).std()
    wq = np.zeros((nh * hd, d))  # [heads * head_dim, d_model]
    wk = np.zeros((nkv * hd, d))  # [kv_heads * head_dim, d_model]
    wq[:, _BIGRAM] = rng.normal(size=(nh * hd, _RANK))
    wk[:, _BIGRAM] = rng.normal(size=(nkv * hd, _RANK))
    q = (normed @ wq.T).reshape(len(normed), nh, hd)  # [vocab, heads, head_dim]
    kk = (normed @ wk.T).reshape(len(normed), nkv, hd)  # [vocab, kv_heads, head_dim]
    scores = np.einsum("ihd,jhd->ijh", q[:, ::group], kk) / np.sqrt(hd)  # [vocab, vocab, kv]
    gain = np.sqrt(_CONTENT_SCORE_STD / scores.std())
    wq *= gain
    wk *= gain
    wo = np.zeros((d, nh * hd))  # [d_model, heads * head_dim]
    wo[_CONTEXT] = rng.normal(0.0, out_std / np.sqrt(nh * hd), size=(n_ctx, nh * hd))

    if len(positional_shifts) > group:
        raise ValueError("positional heads must share KV group 0")
    if positional_shifts:
        # Key of KV head 0: amplitude on the real part of the fastest pairs, read from the
        # constant dim. Query for shift s: that key rotated by -s*theta per pair, so the RoPE'd
        # score ~ sum_i cos((s - distance) * theta_i) peaks at distance == s.
        theta = _rope_theta(dims)[:_POS_PAIRS]  # [pairs]
        amp = _POS_AMPLITUDE / _C0
        re = 2 * np.arange(_POS_PAIRS)
        wk[:hd] = 0.0
        wk[re, _CONST] = amp
        for h, shift in enumerate(positional_shifts):
            wq[h * hd : (h + 1) * hd] = 0.0
            wq[h * hd + re, _CONST] = amp * np.cos(shift * theta)
            wq[h * hd + re + 1, _CONST] = -amp * np.sin(shift * theta)
    if penalty is not None:
        mix, beta = penalty
        n_pen = _PENALTY.stop - _PENALTY.start
        if hd < n_pen or nkv < 2:
            raise ValueError("the penalty head needs head_dim >= penalty dims and 2+ KV heads")
        last, v0 = (nh - 1) * hd, (nkv - 1) * hd
        wq[last:] = 0.0  # all scores 0: uniform over the causal context
        wv[v0:] = 0.0
        wv[v0 : v0 + n_pen, _BIGRAM] = mix  # values G @ emb[bigram]: [n_pen] per token
        wo[:, last:] = 0.0
        wo[_PENALTY, last : last + n_pen] = -beta * np.eye(n_pen)
    return {"attn_q": wq, "attn_k": wk, "attn_v": wv, "attn_output": wo}


def _ffn(
    rng: np.random.Generator, dims: FixtureDims, reads: list[slice], out_std: float
) -> dict[str, np.ndarray]:
    """SwiGLU weights reading `reads` and writing the context subspace (layout [out, in])."""
    d, f = dims.d_model, dims.ffn
    read_mask = np.zeros(d, dtype=bool)
    for s in reads:
        read_mask[s] = True
    n_read = int(read_mask.sum())
    gate = np.zeros((f, d))  # [ffn, d_model]
    up = np.zeros((f, d))  # [ffn, d_model]
    # Inputs have per-dim rms about 1, so 1/sqrt(n_read) gives pre-activations of std about 1.
    gate[:, read_mask] = rng.normal(0.0, 1.0 / np.sqrt(n_read), size=(f, n_read))
    up[:, read_mask] = rng.normal(0.0, 1.0 / np.sqrt(n_read), size=(f, n_read))
    down = np.zeros((d, f))  # [d_model, ffn]
    n_ctx = _CONTEXT.stop - _CONTEXT.start
    # silu(g) * u with g, u ~ N(0, 1) has rms about 0.6.
    down[_CONTEXT] = rng.normal(0.0, out_std / (0.6 * np.sqrt(f)), size=(n_ctx, f))
    return {"ffn_gate": gate, "ffn_up": up, "ffn_down": down}


def target_tensors(seed: int) -> dict[str, np.ndarray]:
    """All tensors of the target model (GGUF names, numpy layout, float64) for `seed`."""
    dims = TARGET_DIMS
    rng = np.random.default_rng([seed, 0x7A26])
    _, docs = build_vocab()
    factor_a, factor_b = factorize(bigram_log_probs(docs), _RANK)
    emb, k = _embedding(dims, factor_a)
    mix = _penalty_mix(rng, emb)
    ones = np.ones(dims.d_model)
    tensors = {
        "token_embd.weight": emb,
        "output_norm.weight": ones,
        "output.weight": _head(rng, emb, factor_b, k, mix),
    }
    ctx_reads = [_BIGRAM, _CONTEXT]
    layers = [
        {
            **_attention(
                rng,
                dims,
                emb,
                out_std=_CTX_ATTN_L0,
                positional_shifts=(1, 2),
                penalty=(mix, _REPEAT_PENALTY),
            ),
            **_ffn(rng, dims, ctx_reads, _CTX_FFN_L0),
        },
        {
            **_attention(rng, dims, emb, out_std=_CTX_ATTN_L1),
            **_ffn(rng, dims, ctx_reads, _CTX_FFN_L1),
        },
    ]
    for i, layer in enumerate(layers):
        tensors[f"blk.{i}.attn_norm.weight"] = ones
        tensors[f"blk.{i}.ffn_norm.weight"] = ones
        for name, w in layer.items():
            tensors[f"blk.{i}.{name}.weight"] = w
    return tensors


def draft_tensors(seed: int, target: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The draft: the target's embedding, head and first layer with multiplicative noise.

    Each nonzero weight w becomes w * (1 + _DRAFT_NOISE * n), n ~ N(0, 1); norm weights are
    copied, so the hand-set structure (subspaces, positional heads) survives with errors.
    """
    rng = np.random.default_rng([seed, 0xD2AF7])
    out: dict[str, np.ndarray] = {}
    for name, w in target.items():
        if name.startswith("blk.") and int(name.split(".")[1]) >= DRAFT_DIMS.n_layer:
            continue
        if name.endswith("norm.weight"):
            out[name] = w
        else:
            out[name] = w * (1.0 + _DRAFT_NOISE * rng.standard_normal(w.shape))
    return out


def _write_gguf(
    path: Path, name: str, dims: FixtureDims, vocab: Vocab, tensors: dict[str, np.ndarray]
) -> None:
    """Write one F32 Llama GGUF file atomically (temp file in the same directory, then rename)."""
    import gguf

    with atomic_output(path) as tmp:
        writer = gguf.GGUFWriter(tmp, "llama")
        writer.add_name(name)
        writer.add_file_type(int(gguf.LlamaFileType.ALL_F32))
        writer.add_context_length(dims.n_ctx_train)
        writer.add_embedding_length(dims.d_model)
        writer.add_block_count(dims.n_layer)
        writer.add_feed_forward_length(dims.ffn)
        writer.add_head_count(dims.n_head)
        writer.add_head_count_kv(dims.n_head_kv)
        writer.add_rope_dimension_count(dims.head_dim)
        writer.add_rope_freq_base(ROPE_FREQ_BASE)
        writer.add_layer_norm_rms_eps(RMS_EPS)
        writer.add_vocab_size(VOCAB_SIZE)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("gpt-2")
        writer.add_token_list(list(vocab.tokens))
        writer.add_token_types(list(vocab.token_types))
        writer.add_token_merges(list(vocab.merges))
        writer.add_bos_token_id(vocab.bos_id)
        writer.add_eos_token_id(vocab.eos_id)
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        for tensor_name, w in tensors.items():
            writer.add_tensor(tensor_name, np.ascontiguousarray(w, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()


def write_fixtures(out_dir: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write `out_dir/target.gguf` and `out_dir/draft.gguf` for `seed`; return their paths.

    Creates `out_dir` (and parents) if needed and replaces existing files atomically; raises
    ExportError if the directory cannot be created. Both files share one vocabulary (384
    tokens, GPT-2 byte-level BPE, BOS 382, EOS 383, add_bos) and are byte-identical for the
    same seed on the same numpy build.
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create output directory {out_dir}: {e.strerror or e}") from e
    vocab, _ = build_vocab()
    target = target_tensors(seed)
    draft = draft_tensors(seed, target)
    target_path, draft_path = out_dir / "target.gguf", out_dir / "draft.gguf"
    _write_gguf(target_path, f"coinfer-fixture-target-s{seed}", TARGET_DIMS, vocab, target)
    _write_gguf(draft_path, f"coinfer-fixture-draft-s{seed}", DRAFT_DIMS, vocab, draft)
    return target_path, draft_path
