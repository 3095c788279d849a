"""MkDocs hook: render the Sphinx roles of cropcore's docstrings (:func:`explain`) as API links.

mkdocstrings reads the docstrings as Google style and leaves reST roles as text, so the API page
would show ":func:`explain`". This turns each role into an optional mkdocs-autorefs reference:
a link where the object is documented on the site, plain code otherwise.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:func|class|data|mod|meth|attr|exc|obj):<code>~?([\w.]+)</code>")


def _identifier(name: str) -> str:
    if name.startswith(("cropcore.", "cropcore_numpy")) or name == "cropcore":
        return name
    if name.startswith("cropcore_"):  # a hook specification
        return f"cropcore.hookspecs.{name}"
    return f"cropcore.{name}"


def _autoref(match: re.Match[str]) -> str:
    name = match[1]
    return f'<autoref identifier="{_identifier(name)}" optional><code>{name}</code></autoref>'


def on_page_content(html: str, **kwargs: Any) -> str:
    return _ROLE.sub(_autoref, html)
