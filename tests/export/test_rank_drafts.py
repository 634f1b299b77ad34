"""`model-export llm rank-drafts`: the N(b)/T(b) model and measured ranking on the fixtures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from export import write_fixtures
from export._rank_drafts import (
    acceptance_mle,
    best_draft_length,
    draft_labels,
    expected_tokens,
    monotone_timings,
    rank_drafts,
    round_seconds,
)

pytest.importorskip("llama_cpp", reason="needs llama-cpp-python: pip install 'coinfer[llm]'")

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "export", "llm", "rank-drafts", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)


# -- the model -------------------------------------------------------------------------------


def test_expected_tokens_hand_values() -> None:
    assert expected_tokens(0.0, 5) == 1.0  # every draft rejected: the correction token only
    assert expected_tokens(1.0, 4) == 5.0  # all accepted plus the bonus token
    assert expected_tokens(0.5, 1) == pytest.approx(1.5)  # 1 + 0.5
    assert expected_tokens(0.5, 3) == pytest.approx(1.875)  # 1 + .5 + .25 + .125
    assert expected_tokens(0.8, 0) == 1.0
    with pytest.raises(ValueError):
        expected_tokens(1.5, 2)


def test_expected_tokens_matches_simulated_rounds() -> None:
    # Naive reference: simulate rounds where each drafted token is accepted with prob a
    # until the first rejection; the round yields the accepted tokens plus one.
    rng = np.random.default_rng(7)
    for a, b in [(0.3, 2), (0.7, 5), (0.9, 8)]:
        accepted = rng.random((200_000, b)) < a  # [rounds, b]
        n_acc = np.where(accepted.all(axis=1), b, np.argmin(accepted, axis=1))
        assert np.mean(n_acc + 1) == pytest.approx(expected_tokens(a, b), rel=0.01)


def test_acceptance_mle_recovers_a_from_fixed_length_rounds() -> None:
    assert acceptance_mle(0, 0) == 0.0
    assert acceptance_mle(6, 2) == 0.75
    rng = np.random.default_rng(3)
    a, gamma = 0.65, 4
    accepted = rng.random((100_000, gamma)) < a
    n_acc = np.where(accepted.all(axis=1), gamma, np.argmin(accepted, axis=1))
    estimate = acceptance_mle(int(n_acc.sum()), int((n_acc < gamma).sum()))
    assert estimate == pytest.approx(a, abs=0.005)


def test_round_time_and_best_length_hand_computed() -> None:
    t_eval = [0.010, 0.011, 0.012, 0.013]  # seconds for batches of 1..4 tokens
    # T(2) = 2*0.004 + 0.005 + t_eval(3) + N(2)*0.001 with N(2) = 1 + .5 + .25
    assert round_seconds(0.5, 2, 0.004, 0.005, t_eval, 0.001) == pytest.approx(
        0.008 + 0.005 + 0.012 + 1.75 * 0.001
    )
    with pytest.raises(ValueError, match="batch of 5"):
        round_seconds(0.5, 4, 0.004, 0.005, t_eval, 0.0)
    # a = 0: drafting never pays; b = 1 is the least bad and slower than the target alone.
    e = best_draft_length(0.0, 0.004, 0.005, t_eval, 0.0, 3)
    assert e.b == 1 and e.tokens_per_s == pytest.approx(1 / (0.004 + 0.005 + 0.011))
    assert e.speedup == pytest.approx(0.010 / 0.020)
    # a = 1 with free drafting: the longest length wins.
    assert best_draft_length(1.0, 0.0, 0.005, t_eval, 0.0, 3).b == 3
    # Brute force over b agrees with the argmax for an interior optimum.
    t_eval = [0.02 + 0.002 * m for m in range(17)]
    a, t_d, t_net = 0.8, 0.006, 0.01
    rates = [
        expected_tokens(a, b) / round_seconds(a, b, t_d, t_net, t_eval, 0.0005)
        for b in range(1, 17)
    ]
    e = best_draft_length(a, t_d, t_net, t_eval, 0.0005, 16)
    assert e.b == 1 + int(np.argmax(rates)) and 1 < e.b < 16
    assert e.tokens_per_s == pytest.approx(max(rates))


def test_monotone_timings_is_isotonic_regression() -> None:
    increasing = [0.010, 0.011, 0.015, 0.020]
    assert monotone_timings(increasing) == increasing
    # One violation: the pair is pooled to its mean.
    assert monotone_timings([0.010, 0.030, 0.020, 0.040]) == pytest.approx(
        [0.010, 0.025, 0.025, 0.040]
    )
    assert monotone_timings([0.03, 0.02, 0.01]) == pytest.approx([0.02] * 3)
    # Naive reference: among non-decreasing sequences it minimizes the squared error; check
    # it against random non-decreasing candidates.
    rng = np.random.default_rng(11)
    y = rng.random(8)
    fit = np.array(monotone_timings(list(y)))
    assert np.all(np.diff(fit) >= -1e-15)
    best = ((fit - y) ** 2).sum()
    for _ in range(2000):
        cand = np.sort(rng.random(8))
        assert ((cand - y) ** 2).sum() >= best - 1e-12


def test_labels_tell_same_named_files_apart() -> None:
    paths = [Path("/a/x/draft.gguf"), Path("/a/y/draft.gguf"), Path("/a/y/q.gguf")]
    assert draft_labels(paths) == {
        paths[0]: "x/draft.gguf",
        paths[1]: "y/draft.gguf",
        paths[2]: "y/q.gguf",
    }


# -- measured on the fixtures ------------------------------------------------------------------


@pytest.fixture(scope="module")
def weak_draft(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seed-1 fixture draft: same vocabulary and shape as seed 0's, other weights, so it
    runs at the same speed against the seed-0 target but agrees with it less often."""
    _, draft = write_fixtures(tmp_path_factory.mktemp("seed1"), seed=1)
    return draft


def test_higher_acceptance_ranks_higher_at_equal_speed(
    fixture_models: tuple[Path, Path], weak_draft: Path
) -> None:
    target, good = fixture_models
    # A 20 ms link dominates the round time, so timing noise on a busy machine cannot undo
    # what the acceptance difference does.
    report = rank_drafts(
        target, [weak_draft, good], rtt_ms=20.0, max_tokens=32, n_threads=1, progress=False
    )
    by_path = {d.path: d for d in report.drafts}
    for temp in (0.0, 0.8):
        assert by_path[good].acceptance[temp].a > by_path[weak_draft].acceptance[temp].a + 0.1
    assert [d.path for d in report.drafts] == [good, weak_draft]
    assert report.drafts[0].expected[0.0].speedup > report.drafts[1].expected[0.0].speedup
    # Same architecture and size: the speed difference is noise, not a factor of two.
    ratio = by_path[good].tokens_per_s / by_path[weak_draft].tokens_per_s
    assert 0.5 < ratio < 2.0
    good_acc = by_path[good].acceptance[0.0]
    assert good_acc.rounds > 50 and good_acc.produced == good_acc.accepted + good_acc.rounds
    assert 0.45 < good_acc.a < 0.85  # docs/fixtures.md: greedy acceptance about 0.6


def test_acceptance_counts_are_deterministic(fixture_models: tuple[Path, Path]) -> None:
    target, draft = fixture_models
    runs = [
        rank_drafts(target, [draft], max_tokens=24, n_threads=1, progress=False, seed=5)
        for _ in range(2)
    ]
    for temp in (0.0, 0.8):
        a, b = (r.drafts[0].acceptance[temp] for r in runs)
        assert (a.rounds, a.accepted, a.rejections) == (b.rounds, b.accepted, b.rejections)


def test_cli_prints_table_and_writes_json(
    tmp_path: Path, fixture_models: tuple[Path, Path], weak_draft: Path
) -> None:
    target, good = fixture_models
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# two prompts\nThe river\n\nGood tools make\\ngood work\n")
    out = tmp_path / "rank.json"
    proc = _cli(
        str(target), str(good), str(weak_draft), "--prompts", str(prompts), "--rtt-ms", "20",
        "--max-tokens", "16", "--json", str(out), "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("target target.gguf:") and "RTT 20 ms" in lines[0]
    assert "2 prompts x 16 tokens" in lines[0]
    header = next(line for line in lines if "a(T=0)" in line)
    assert "a(T=0.8)" in header and "speedup" in header and "tok/s" in header
    rows = [line for line in lines if line.lstrip()[:2].strip().isdigit()]
    assert len(rows) == 2 and rows[0].split()[0] == "1" and rows[1].split()[0] == "2"
    assert "N(b)=(1-a^(b+1))/(1-a)" in proc.stdout
    data = json.loads(out.read_text())
    assert data["n_prompts"] == 2 and len(data["drafts"]) == 2
    assert data["drafts"][0]["rank"] == 1
    assert set(data["drafts"][0]["acceptance"]) == {"0.0", "0.8"}
    assert len(data["t_eval_s"]) == len(data["t_eval_measured_s"]) == 17
    assert "measuring" in proc.stderr


def test_padded_draft_vocabulary_is_measured_on_the_shared_ids(
    tmp_path: Path, fixture_models: tuple[Path, Path]
) -> None:
    from gguf_variants import with_extra_tokens

    target, draft = fixture_models
    padded = with_extra_tokens(
        draft, tmp_path / "padded.gguf", [f"<unused{i}>" for i in range(64)], 5
    )
    report = rank_drafts(target, [padded], max_tokens=16, n_threads=1, progress=False,
                         prompts=["The river"])  # fmt: skip
    assert report.drafts[0].acceptance[0.0].rounds > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompts", "/nonexistent/prompts.txt"], "prompt file /nonexistent/prompts.txt"),
        (["--rtt-ms", "-1"], "--rtt-ms must be a finite number >= 0"),
    ],
    ids=["missing-prompts", "negative-rtt"],
)
def test_bad_options_exit_2(
    fixture_models: tuple[Path, Path], args: list[str], message: str
) -> None:
    target, draft = fixture_models
    proc = _cli(str(target), str(draft), *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("model-export: error:") and message in lines[-1]


def test_incompatible_draft_is_refused_naming_the_difference(
    tmp_path: Path, fixture_models: tuple[Path, Path]
) -> None:
    from gguf_variants import rewrite_gguf, token_list

    target, draft = fixture_models
    tokens, _ = token_list(draft)
    tokens[300] = "Ġzebra"
    bad = rewrite_gguf(draft, tmp_path / "bad.gguf", fields={"tokenizer.ggml.tokens": tokens})
    proc = _cli(str(target), str(bad))
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert "bad.gguf cannot draft for" in last and "id 300: draft 'Ġzebra'" in last
