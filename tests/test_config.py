"""One table of environment variables (cropcore.config), one parser, documented in docs/dispatch.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cropcore import config

ROOT = Path(__file__).resolve().parents[1]
# A variable's name as a string literal in Python code (C macros share the prefix, not the quotes).
NAME = re.compile(r"[\"'](CROPCORE_[A-Z0-9_]*[A-Z0-9])[\"']")


def test_every_variable_the_code_reads_is_in_the_table():
    sources = [*(ROOT / "cropcore").rglob("*.py"), *(ROOT / "backends").rglob("*.py")]
    named = {name for path in sources for name in NAME.findall(path.read_text())}
    assert named <= set(config.VARIABLES), named - set(config.VARIABLES)


def test_the_documented_table_is_the_code_s_table():
    text = (ROOT / "docs" / "dispatch.md").read_text()
    table = text[text.index("## Environment variables") :]
    documented = re.findall(r"^\| `(CROPCORE_[A-Z0-9_]+)` \|", table, re.MULTILINE)
    assert documented == list(config.VARIABLES)


def test_a_change_to_the_environment_is_seen_at_the_next_read(monkeypatch):
    monkeypatch.delenv("CROPCORE_PRIORITY", raising=False)
    assert config.get("CROPCORE_PRIORITY") is None
    monkeypatch.setenv("CROPCORE_PRIORITY", " numpy , numba,,")
    assert config.get("CROPCORE_PRIORITY") == ("numpy", "numba")
    monkeypatch.setenv("CROPCORE_PRIORITY", "torch")
    assert config.get("CROPCORE_PRIORITY") == ("torch",)


def test_an_empty_value_means_unset(monkeypatch):
    monkeypatch.setenv("CROPCORE_TORCH_NATIVE", "")
    assert config.get("CROPCORE_TORCH_NATIVE") is True


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("CROPCORE_MAX_OUTPUT_BYTES", "1000", 1000),
        ("CROPCORE_TORCH_RECYCLE", "Off", False),
        ("CROPCORE_TORCH_RECYCLE", "yes", True),
        ("CROPCORE_BACKEND", " numba ", "numba"),
    ],
)
def test_values_are_parsed(monkeypatch, name, text, expected):
    monkeypatch.setenv(name, text)
    assert config.get(name) == expected


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("CROPCORE_MAX_OUTPUT_BYTES", "lots", "whole number of bytes"),
        ("CROPCORE_MAX_OUTPUT_BYTES", "-1", "not negative"),
        ("CROPCORE_DETERMINISTIC", "maybe", "1/0, true/false"),
    ],
)
def test_a_malformed_value_names_the_variable(monkeypatch, name, text, message):
    monkeypatch.setenv(name, text)
    with pytest.raises(ValueError, match=f"{name}='{text}': .*{message}"):
        config.get(name)


def test_an_unknown_name_is_a_bug_in_cropcore():
    with pytest.raises(KeyError):
        config.get("CROPCORE_NO_SUCH_VARIABLE")
