"""``ondevice.common.extras``: an absent optional package becomes one line naming the extra."""

from __future__ import annotations

import pytest

from ondevice.common.extras import MissingExtra, available, install_hint, missing_extra, require


def test_hint_names_the_distribution_and_the_extra() -> None:
    assert install_hint("llama_cpp").startswith(
        "llama-cpp-python is not installed: pip install 'coinfer[llm]'")
    assert "coinfer[export-llm]" in install_hint("gguf")
    assert "coinfer[dnn]" in install_hint("onnxruntime")
    assert "coinfer[pico]" in install_hint("mpremote")


def test_missing_extra_follows_a_wrapping_import_error() -> None:
    try:
        try:
            raise ModuleNotFoundError("No module named 'torch'", name="torch")
        except ImportError as inner:
            raise ImportError("the DNN export needs torch") from inner
    except ImportError as exc:
        assert missing_extra(exc) == install_hint("torch")


def test_other_import_errors_are_not_disguised() -> None:
    assert missing_extra(ModuleNotFoundError("x", name="not_an_extra_pkg")) is None
    assert missing_extra(ValueError("no")) is None
    with pytest.raises(ModuleNotFoundError):
        require("not_an_extra_pkg_at_all")


def test_require_turns_an_absent_optional_module_into_one_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "mpremote", None)  # import of it now fails
    with pytest.raises(MissingExtra) as info:
        require("mpremote")
    assert str(info.value) == install_hint("mpremote") and "\n" not in str(info.value)
    assert not available("mpremote")
    assert require("json").dumps(1) == "1"
