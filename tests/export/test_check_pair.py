"""`model-export llm check-pair`: tokenizer comparison of a draft and a target GGUF."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import gguf
import pytest
from gguf_variants import rewrite_gguf, token_list, with_extra_tokens

from export import ExportError
from export._check_pair import check_pair

REPO = Path(__file__).resolve().parents[2]
UNUSED, NORMAL, CONTROL = (
    int(gguf.TokenType.UNUSED),
    int(gguf.TokenType.NORMAL),
    int(gguf.TokenType.CONTROL),
)


def _not_gguf(tmp: Path) -> Path:
    path = tmp / "x.gguf"
    path.write_text("hello")
    return path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "export", "llm", "check-pair", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)


def test_fixture_pair_is_valid_and_cli_exits_0(fixture_models: tuple[Path, Path]) -> None:
    target, draft = fixture_models
    report = check_pair(draft, target)
    assert report.valid and not report.padded and report.mismatches == []
    assert report.shared_tokens == 384
    proc = _cli(str(draft), str(target))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("VALID: draft.gguf can draft for target.gguf")
    assert "gpt2" in proc.stdout and "384 shared tokens" in proc.stdout


def test_changed_token_is_named_with_id_and_both_texts(
    tmp_path: Path, fixture_models: tuple[Path, Path]
) -> None:
    target, draft = fixture_models
    tokens, _ = token_list(draft)
    old = tokens[300]
    tokens[300] = "Ġzebra"
    variant = rewrite_gguf(draft, tmp_path / "d.gguf", fields={"tokenizer.ggml.tokens": tokens})
    report = check_pair(variant, target)
    assert not report.valid
    assert len(report.mismatches) == 1
    assert report.mismatches[0] == (
        f"token text differs at 1 id: id 300: draft 'Ġzebra' vs target {old!r}"
    )
    proc = _cli(str(variant), str(target))
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[0] == (
        "INVALID: d.gguf cannot draft for target.gguf: 1 difference"
    )
    assert "id 300: draft 'Ġzebra'" in proc.stdout


def test_changed_special_token_is_named(tmp_path: Path, fixture_models: tuple[Path, Path]) -> None:
    target, draft = fixture_models
    variant = rewrite_gguf(draft, tmp_path / "eos.gguf", fields={"tokenizer.ggml.eos_token_id": 10})
    report = check_pair(variant, target)
    assert report.mismatches == [
        "tokenizer.ggml.eos_token_id: draft 10 'Ċ' vs target 383 '<|endoftext|>'"
    ]
    flag = rewrite_gguf(
        draft, tmp_path / "bos.gguf", fields={"tokenizer.ggml.add_bos_token": False}
    )
    assert check_pair(flag, target).mismatches == [
        "tokenizer.ggml.add_bos_token: draft false vs target true"
    ]


def test_changed_token_type_is_named(tmp_path: Path, fixture_models: tuple[Path, Path]) -> None:
    target, draft = fixture_models
    _, types = token_list(draft)
    types[65] = CONTROL
    variant = rewrite_gguf(draft, tmp_path / "t.gguf", fields={"tokenizer.ggml.token_type": types})
    assert check_pair(variant, target).mismatches == [
        "token types differ at 1 id: id 65 'A': draft CONTROL vs target NORMAL"
    ]


def test_different_vocabulary_size_is_a_mismatch(
    tmp_path: Path, fixture_models: tuple[Path, Path]
) -> None:
    target, draft = fixture_models
    extra = [f"<extra{i}>" for i in range(16)]
    variant = with_extra_tokens(draft, tmp_path / "big.gguf", extra, NORMAL)
    report = check_pair(variant, target)
    assert report.mismatches == [
        "vocabulary size draft 400 vs target 384 tokens; the draft's extra ids 384-399 are not "
        "padding: id 384 is '<extra0>' of type NORMAL"
    ]
    proc = _cli(str(target), str(variant))  # the other way round: the target is longer
    assert proc.returncode == 1
    assert "the target's extra ids 384-399 are not padding" in proc.stdout


def test_unused_tail_rows_are_reported_as_padding(
    tmp_path: Path, fixture_models: tuple[Path, Path]
) -> None:
    target, draft = fixture_models
    pads = [f"<unused{i}>" for i in range(64)]
    padded = with_extra_tokens(target, tmp_path / "padded.gguf", pads, UNUSED)
    report = check_pair(draft, padded)
    assert report.valid and report.padded
    assert report.notes == [
        "vocabulary size draft 384 vs target 448 tokens: the target's 64 extra ids 384-447 "
        "are all UNUSED padding; ids below 384 are shared"
    ]
    proc = _cli(str(draft), str(padded))
    assert proc.returncode == 0
    assert "VALID" in proc.stdout and "padded vocabularies" in proc.stdout
    # The padded file is a real model: llama.cpp loads it and its vocabulary is 448.
    from ondevice.common.llama_runtime import LlamaModel

    with LlamaModel(padded) as model:
        assert model.n_vocab == 448


def test_several_differences_are_all_listed(
    tmp_path: Path, fixture_models: tuple[Path, Path]
) -> None:
    target, draft = fixture_models
    tokens, _ = token_list(draft)
    tokens[256], tokens[257] = tokens[257], tokens[256]
    variant = rewrite_gguf(
        draft,
        tmp_path / "many.gguf",
        fields={"tokenizer.ggml.tokens": tokens, "tokenizer.ggml.pre": "llama-bpe"},
    )
    report = check_pair(variant, target)
    assert len(report.mismatches) == 2
    # The tokenizer's model and pre-tokenizer come first: they explain everything else.
    assert report.mismatches[0] == "tokenizer.ggml.pre: draft 'llama-bpe' vs target 'gpt-2'"
    assert report.mismatches[1].startswith("token text differs at 2 ids: id 256: draft ")


def test_chat_template_difference_is_only_a_note(
    tmp_path: Path, fixture_models: tuple[Path, Path]
) -> None:
    target, draft = fixture_models
    variant = rewrite_gguf(
        draft,
        tmp_path / "chat.gguf",
        add={"tokenizer.chat_template": ("{{ messages }}", gguf.GGUFValueType.STRING, None)},
    )
    report = check_pair(variant, target)
    assert report.valid
    assert report.notes == [
        "tokenizer.chat_template differs (chat formatting only; ids are unaffected)"
    ]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "missing.gguf", "does not exist"),
        (lambda tmp: tmp, "not a regular file"),
        (_not_gguf, "not a GGUF file"),
    ],
    ids=["missing", "directory", "not-gguf"],
)
def test_bad_input_exits_2_with_one_line(
    tmp_path: Path,
    fixture_models: tuple[Path, Path],
    make: Callable[[Path], Path],
    message: str,
) -> None:
    bad = make(tmp_path)
    proc = _cli(str(bad), str(fixture_models[0]))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("model-export: error:")
    assert message in lines[0]
    with pytest.raises(ExportError, match=message):
        check_pair(fixture_models[1], bad)
