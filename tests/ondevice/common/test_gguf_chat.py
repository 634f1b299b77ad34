"""`ondevice.common.gguf_chat`: reading and writing ``tokenizer.chat_template`` without llama.cpp
or the gguf package, checked against the gguf package's reader (the reference) and llama.cpp."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from ondevice.common.gguf_chat import (
    CHAT_TEMPLATE_KEY,
    GEMMA3_CHAT_TEMPLATE,
    choose_chat_template,
    copy_with_chat_template,
    read_chat_template,
    read_header,
    read_template_file,
)
from ondevice.common.gguf_file import GgufFileError

gguf = pytest.importorskip("gguf", reason="the reference reader: pip install gguf")

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
          "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\\n' }}{% endif %}")


def _fields(path: Path) -> dict[str, object]:
    r = gguf.GGUFReader(str(path))
    return {f.name: f.contents() for f in r.fields.values() if not f.name.startswith("GGUF.")}


def _with_keys(src: Path, dst: Path, add: dict[str, tuple[object, object]]) -> Path:
    """`src` (F32 tensors) rewritten by the gguf package's writer with keys added."""
    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dst), str(r.fields["general.architecture"].contents()))
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(f.name, f.contents(), f.types[0], sub_type=sub)
    for name, (value, vtype) in add.items():
        if name == "general.alignment":  # the writer must also align the data to it
            w.add_custom_alignment(int(value))  # type: ignore[call-overload]
        else:
            w.add_key_value(name, value, vtype)
    for t in r.tensors:
        w.add_tensor(t.name, np.array(t.data, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def _tensors(path: Path) -> dict[str, tuple[int, bytes]]:
    r = gguf.GGUFReader(str(path))
    return {t.name: (int(t.tensor_type), np.asarray(t.data).tobytes()) for t in r.tensors}


@pytest.mark.parametrize(
    ("existing", "arch", "given", "expect"),
    [
        (None, "gemma3", None, GEMMA3_CHAT_TEMPLATE),  # the demo's Gemma: none -> Gemma 3's
        ("", "gemma3", None, GEMMA3_CHAT_TEMPLATE),  # an empty one counts as none
        ("T", "gemma3", None, None),  # its own is kept
        (None, "llama", None, None),  # no guess for another family
        (None, None, None, None),
        ("T", "llama", "G", "G"),  # the user's always wins
        (None, "gemma3", "G", "G"),
    ],
)
def test_choose_chat_template(existing: str | None, arch: str | None, given: str | None,
                              expect: str | None) -> None:
    assert choose_chat_template(existing, arch, given) == expect


def test_gemma3_template_is_googles() -> None:
    t = GEMMA3_CHAT_TEMPLATE
    assert t.startswith("{{ bos_token }}\n{%- if messages[0]['role'] == 'system' -%}")
    assert "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}"\
        in t
    assert "{{ '<end_of_turn>\\n' }}" in t and t.endswith(
        "{%- if add_generation_prompt -%}\n    {{'<start_of_turn>model\\n'}}\n{%- endif -%}\n")
    assert "\n" in t and "\\n\\n" in t  # Jinja escapes kept as written, lines as written


def test_copy_adds_a_template_and_keeps_everything_else(
        fixture_models: tuple[Path, Path], tmp_path: Path) -> None:
    src = fixture_models[1]
    assert read_chat_template(src) is None
    out = tmp_path / "d.gguf"
    copy_with_chat_template(src, out, GEMMA3_CHAT_TEMPLATE)
    before, after = _fields(src), _fields(out)
    assert after.pop(CHAT_TEMPLATE_KEY) == GEMMA3_CHAT_TEMPLATE
    assert after == before
    assert _tensors(out) == _tensors(src)
    assert read_chat_template(out) == GEMMA3_CHAT_TEMPLATE
    head = read_header(out)
    assert head.data_start % head.alignment == 0


def test_copy_replaces_a_template(fixture_models: tuple[Path, Path], tmp_path: Path) -> None:
    first = tmp_path / "a.gguf"
    _with_keys(fixture_models[1], first, {CHAT_TEMPLATE_KEY: ("old", gguf.GGUFValueType.STRING),
                                          "general.alignment": (64, gguf.GGUFValueType.UINT32)})
    assert read_chat_template(first) == "old"
    second = tmp_path / "b.gguf"
    copy_with_chat_template(first, second, CHATML)
    fields = _fields(second)
    assert fields[CHAT_TEMPLATE_KEY] == CHATML and fields["general.alignment"] == 64
    assert len(fields) == len(_fields(first))
    assert _tensors(second) == _tensors(first)
    assert read_header(second).data_start % 64 == 0


def test_llama_cpp_reads_the_written_template(fixture_models: tuple[Path, Path],
                                              tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python: pip install 'coinfer[llm]'")
    from ondevice.common.llama_runtime import LlamaModel

    out = tmp_path / "d.gguf"
    copy_with_chat_template(fixture_models[1], out, CHATML)
    with LlamaModel(out) as model:
        assert model.chat_template() == CHATML


def test_bad_inputs_raise_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"GGUF" + struct.pack("<IQQ", 1, 0, 0))
    with pytest.raises(GgufFileError, match="version 1"):
        read_header(bad)
    bad.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 99))
    with pytest.raises(GgufFileError):
        read_header(bad)
    bad.write_bytes(b"NOPE" + bytes(20))
    with pytest.raises(GgufFileError):
        read_chat_template(bad)
    empty = tmp_path / "t.jinja"
    empty.write_text(" \n")
    with pytest.raises(ValueError, match="is empty"):
        read_template_file(empty)
    with pytest.raises(ValueError, match="cannot read"):
        read_template_file(tmp_path / "missing.jinja")
