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


def test_the_environment_is_read_at_import_and_again_by_reload(monkeypatch):
    monkeypatch.setenv("CROPCORE_PRIORITY", "numba")
    assert config.get("CROPCORE_PRIORITY") is None  # read when cropcore was imported
    config.reload()
    assert config.get("CROPCORE_PRIORITY") == ("numba",)
    config.reload({})
    assert config.get("CROPCORE_PRIORITY") is None


def test_a_malformed_value_does_not_break_reload_it_raises_where_it_is_used(cropcore_env):
    cropcore_env.set("CROPCORE_MAX_OUTPUT_BYTES", "lots")
    with pytest.raises(ValueError, match="CROPCORE_MAX_OUTPUT_BYTES='lots'"):
        config.get("CROPCORE_MAX_OUTPUT_BYTES")


def test_a_change_to_the_environment_is_seen_after_reload(cropcore_env):
    cropcore_env.delete("CROPCORE_PRIORITY")
    assert config.get("CROPCORE_PRIORITY") is None
    cropcore_env.set("CROPCORE_PRIORITY", " numpy , numba,,")
    assert config.get("CROPCORE_PRIORITY") == ("numpy", "numba")
    cropcore_env.set("CROPCORE_PRIORITY", "torch")
    assert config.get("CROPCORE_PRIORITY") == ("torch",)


def test_an_empty_value_means_unset(cropcore_env):
    cropcore_env.set("CROPCORE_TORCH_NATIVE", "")
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
def test_values_are_parsed(cropcore_env, name, text, expected):
    cropcore_env.set(name, text)
    assert config.get(name) == expected


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("CROPCORE_MAX_OUTPUT_BYTES", "lots", "whole number of bytes"),
        ("CROPCORE_MAX_OUTPUT_BYTES", "-1", "not negative"),
        ("CROPCORE_DETERMINISTIC", "maybe", "1/0, true/false"),
    ],
)
def test_a_malformed_value_names_the_variable(cropcore_env, name, text, message):
    cropcore_env.set(name, text)
    with pytest.raises(ValueError, match=f"{name}='{text}': .*{message}"):
        config.get(name)


def test_an_unknown_name_is_a_bug_in_cropcore():
    with pytest.raises(KeyError):
        config.get("CROPCORE_NO_SUCH_VARIABLE")
