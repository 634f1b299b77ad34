"""Naive numpy forward pass of a Llama-architecture model, as llama.cpp computes it.

The reference the fixture tests compare llama.cpp against: if both agree, the fixture's weights
mean what export/_fixtures.py says they mean (RoPE NORM pairs, GQA grouping, SwiGLU, RMSNorm).
Slow and simple on purpose: full causal attention over the whole sequence, float64.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def read_gguf_tensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of an F32/F16 GGUF file as float64 numpy arrays in [out, in] layout."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {t.name: np.asarray(t.data, dtype=np.float64) for t in reader.tensors}


def _rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    # x: [n, d]
    return x / np.sqrt((x**2).mean(axis=-1, keepdims=True) + eps) * weight


def _rope_norm(x: np.ndarray, positions: np.ndarray, base: float) -> np.ndarray:
    """Rotate consecutive pairs (x[2i], x[2i+1]) by pos * base^(-2i/head_dim). x: [n, h, hd]."""
    hd = x.shape[-1]
    theta = base ** (-np.arange(0, hd, 2) / hd)  # [hd/2]
    angle = positions[:, None, None] * theta  # [n, 1, hd/2]
    cos, sin = np.cos(angle), np.sin(angle)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def forward(
    tensors: dict[str, np.ndarray],
    tokens: list[int],
    *,
    n_layer: int,
    n_head: int,
    n_head_kv: int,
    rope_base: float = 10000.0,
    eps: float = 1e-5,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Causal forward pass over `tokens` at positions 0..n-1.

    Returns the logits [n, vocab] at every position and, per layer, the attention
    probabilities [heads, n, n] (query position, key position).
    """
    h = tensors["token_embd.weight"][tokens]  # [n, d]
    n, d = h.shape
    hd = d // n_head
    group = n_head // n_head_kv
    positions = np.arange(n, dtype=np.float64)
    mask = np.triu(np.full((n, n), -np.inf), k=1)  # [n, n]
    probs: list[np.ndarray] = []
    for i in range(n_layer):
        p = f"blk.{i}."
        x = _rms_norm(h, tensors[p + "attn_norm.weight"], eps)
        q = (x @ tensors[p + "attn_q.weight"].T).reshape(n, n_head, hd)
        k = (x @ tensors[p + "attn_k.weight"].T).reshape(n, n_head_kv, hd)
        v = (x @ tensors[p + "attn_v.weight"].T).reshape(n, n_head_kv, hd)
        q, k = _rope_norm(q, positions, rope_base), _rope_norm(k, positions, rope_base)
        # Query head j uses KV head j // group (llama.cpp's GQA broadcast).
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)  # [n, heads, hd]
        scores = np.einsum("ihd,jhd->hij", q, k) / np.sqrt(hd) + mask  # [heads, n, n]
        scores -= scores.max(axis=-1, keepdims=True)
        attn = np.exp(scores)
        attn /= attn.sum(axis=-1, keepdims=True)
        probs.append(attn)
        out = np.einsum("hij,jhd->ihd", attn, v).reshape(n, n_head * hd)  # [n, heads*hd]
        h = h + out @ tensors[p + "attn_output.weight"].T
        x = _rms_norm(h, tensors[p + "ffn_norm.weight"], eps)
        gate = x @ tensors[p + "ffn_gate.weight"].T  # [n, ffn]
        up = x @ tensors[p + "ffn_up.weight"].T  # [n, ffn]
        h = h + (gate / (1.0 + np.exp(-gate)) * up) @ tensors[p + "ffn_down.weight"].T
    x = _rms_norm(h, tensors["output_norm.weight"], eps)
    return x @ tensors["output.weight"].T, probs  # [n, vocab]
