"""The API reference renders each function's Returns section as one value (issue 18: mkdocstrings
read every line of a multi-line Returns as a return value of its own, typed ``Any``, and
``mkdocs build --strict`` does not catch that)."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest

griffe = pytest.importorskip("griffe")
yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]


def _handler_config() -> dict:
    """mkdocs.yml's python handler configuration (its !!python tags read as plain strings)."""

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)
    for plugin in config["plugins"]:
        if isinstance(plugin, dict) and "mkdocstrings" in plugin:
            return plugin["mkdocstrings"]["handlers"]["python"]
    raise AssertionError("mkdocs.yml has no mkdocstrings python handler")


def _documented() -> list[str]:
    """Every object a docs page renders with ``::: name``."""
    names = set()
    for page in (ROOT / "docs").glob("*.md"):
        names.update(re.findall(r"^::: ([\w.]+)", page.read_text(), re.M))
    return sorted(names)


def _walk(obj, seen: set[str]):
    if obj.path in seen:
        return
    seen.add(obj.path)
    yield obj
    if obj.is_module or obj.is_class:
        for member in obj.members.values():
            if not member.is_alias:
                yield from _walk(member, seen)


@functools.cache
def _returns_sections() -> tuple[tuple[str, tuple], ...]:
    """(path, return items) of every documented Returns section, parsed as mkdocs.yml says."""
    return tuple(_parse_returns())


def _parse_returns():
    handler = _handler_config()
    options = handler["options"]
    loader = griffe.GriffeLoader(search_paths=[str(ROOT / p) for p in handler["paths"]])
    seen: set[str] = set()
    for name in _documented():
        package, *parts = name.split(".")
        obj = loader.load(package)
        for part in parts:
            obj = obj.members[part]
            if obj.is_alias:
                obj = obj.final_target
        for member in _walk(obj, seen):
            if member.docstring is None:
                continue
            sections = member.docstring.parse(
                options["docstring_style"], **options.get("docstring_options", {})
            )
            for section in sections:
                if section.kind.value == "returns":
                    yield member.path, tuple(section.value)


def test_every_documented_returns_section_is_one_value():
    found = dict(_returns_sections())
    assert "cropcore.api.crop_and_resize" in found  # the check reaches the public functions
    several = {path: len(items) for path, items in found.items() if len(items) != 1}
    assert several == {}


def test_no_documented_return_value_is_misread_as_named():
    # "A :class:`Report`." or "float32 (N, 4): ..." parse as a value named "A" or "float32".
    named = {path: items[0].name for path, items in _returns_sections() if items[0].name}
    assert named == {}
