"""``device_from_args``: each flag ``ondevice generate`` and ``ondevice serve`` share lands in
its group of the ``Device`` (the edge plan, the policy, the draft's llama config)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from ondevice.cli._device_flags import add_device_flags, device_from_args
from ondevice.common.llama_runtime import LlamaConfig
from ondevice.llm.generate import EdgePlan
from ondevice.llm.policies import FixedPolicy, GelatoPolicy


def _device(*argv: str):  # -> Device
    p = argparse.ArgumentParser()
    add_device_flags(p)
    return device_from_args(p.parse_args(["--draft", "missing.gguf", *argv]))


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COINFER_TOKEN", raising=False)
    dev = _device()
    assert dev.plan == EdgePlan(discover=True)  # no --edge: discover
    assert type(dev.policy) is GelatoPolicy and dev.policy.budget is None
    assert (dev.meter_spec, dev.require_meter, dev.top_k) == ("sim", True, 32)
    assert dev.llama_config == LlamaConfig()


def test_every_flag_lands_in_its_group(tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COINFER_TOKEN", raising=False)
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    dev = _device("--edge", "http://127.0.0.1:8470", "--discover", "--interface", "127.0.0.1",
                  "--site", "lab", "--token-file", str(token), "--require-edge",
                  "--edge-timeout", "3", "--browse", "0.5", "--policy", "fixed", "--gamma", "6",
                  "--draft-ahead", "2", "--top-k", "8", "--meter", "rapl", "--meter-optional",
                  "--n-ctx", "256", "--threads", "2")
    assert dev.plan == EdgePlan(url="http://127.0.0.1:8470", discover=True,
                                interfaces=("127.0.0.1",), site="lab", token="s3cret",
                                timeout_s=3.0, browse_s=0.5, require_edge=True)
    assert type(dev.policy) is FixedPolicy and (dev.policy.gamma, dev.policy.ahead) == (6, 2)
    assert (dev.meter_spec, dev.require_meter, dev.top_k) == ("rapl", False, 8)
    assert dev.llama_config == LlamaConfig(n_ctx=256, n_threads=2)
    gelato = _device("--no-discover", "--energy-per-token", "0.4", "--V", "3").policy
    assert gelato.budget is not None and (gelato.budget.j_per_token, gelato.v) == (0.4, 3.0)
    assert _device("--no-discover").plan == EdgePlan()  # the draft alone


def test_usage_errors_are_value_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COINFER_TOKEN", raising=False)
    with pytest.raises(ValueError, match="--policy gelato"):
        _device("--policy", "fixed", "--power-budget", "2")
    with pytest.raises(ValueError, match="TLS certificate pin"):
        _device("--no-discover", "--edge", "http://127.0.0.1:8470", "--edge-fingerprint", "ab" * 32)


def test_several_edges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COINFER_TOKEN", raising=False)
    dev = _device("--no-discover", "--edge", "http://127.0.0.1:8470, http://127.0.0.1:8471/")
    assert dev.plan.urls == ("http://127.0.0.1:8470", "http://127.0.0.1:8471")
    assert dev.plan.url == "http://127.0.0.1:8470" and not dev.plan.discover
    assert dev.plan == EdgePlan(urls=("http://127.0.0.1:8470", "http://127.0.0.1:8471"))
    with pytest.raises(ValueError, match="pins one edge"):
        _device("--no-discover", "--edge", "https://127.0.0.1:1,https://127.0.0.1:2",
                "--edge-fingerprint", "ab" * 32)


@pytest.mark.parametrize(("value", "message"), [
    ("http://a:1,", "several separated by commas"),
    ("http://a:1,,http://b:1", "several separated by commas"),
    ("http://a:1,b:2", "did you mean http://b:2"),
    ("http://a:1,http://a:1/", "http://a:1 is given twice"),
])
def test_bad_edge_lists_are_usage_errors(value: str, message: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    p = argparse.ArgumentParser()
    add_device_flags(p)
    with pytest.raises(SystemExit) as exc:
        p.parse_args(["--draft", "d.gguf", "--no-discover", "--edge", value])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
