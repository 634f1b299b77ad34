"""Write edited copies of the (F32) fixture GGUF files with the gguf package, for tests.

Independent of export/_make_draft.py on purpose: the tests build their inputs with the plain
gguf reader and writer, not with the code under test.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

DELETE = object()  # a field value that removes the key


def rewrite_gguf(
    src: Path,
    dst: Path,
    *,
    fields: dict[str, Any] | None = None,
    add: dict[str, tuple[Any, Any, Any]] | None = None,
    tensors: dict[str, Callable[[np.ndarray], np.ndarray]] | None = None,
    architecture: str | None = None,
) -> Path:
    """Copy `src` to `dst` with existing keys replaced by `fields[name]` (DELETE removes one),
    new keys from `add` (name -> (value, GGUFValueType, sub-type or None)), and tensor `name`
    replaced by `tensors[name](array)`. Every tensor must be F32 (the fixtures are)."""
    import gguf

    fields = fields or {}
    reader = gguf.GGUFReader(str(src))
    arch = architecture or str(reader.fields["general.architecture"].contents())
    writer = gguf.GGUFWriter(str(dst), arch)
    for f in reader.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        value = fields.get(f.name, f.contents())
        if value is DELETE:
            continue
        writer.add_key_value(f.name, value, vtype, sub_type=sub)
    for name, (value, vtype, sub) in (add or {}).items():
        writer.add_key_value(name, value, vtype, sub_type=sub)
    for t in reader.tensors:
        if t.tensor_type != gguf.GGMLQuantizationType.F32:
            raise ValueError(f"{t.name} is {t.tensor_type.name}, only F32 is supported")
        data = np.array(t.data, dtype=np.float32)
        if tensors and t.name in tensors:
            data = np.ascontiguousarray(tensors[t.name](data), dtype=np.float32)
        writer.add_tensor(t.name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def token_list(path: Path) -> tuple[list[str], list[int]]:
    """(token texts, token types) of a GGUF file."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return (
        reader.fields["tokenizer.ggml.tokens"].contents(),
        reader.fields["tokenizer.ggml.token_type"].contents(),
    )


def with_extra_tokens(src: Path, dst: Path, texts: list[str], token_type: int) -> Path:
    """`src` with `texts` appended to the vocabulary (all of `token_type`), and the embedding
    and output head padded with zero rows so llama.cpp still loads the file."""
    tokens, types = token_list(src)
    n = len(texts)

    def pad(w: np.ndarray) -> np.ndarray:  # [vocab, d_model] -> [vocab + n, d_model]
        return np.vstack([w, np.zeros((n, w.shape[1]), dtype=w.dtype)])

    return rewrite_gguf(
        src,
        dst,
        fields={
            "llama.vocab_size": len(tokens) + n,
            "tokenizer.ggml.tokens": tokens + texts,
            "tokenizer.ggml.token_type": types + [token_type] * n,
        },
        tensors={"token_embd.weight": pad, "output.weight": pad},
    )
