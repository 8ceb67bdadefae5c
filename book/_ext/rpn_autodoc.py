"""Sphinx extension of the book: the library's reference reads module constants and properties
as the sentences they are.

Napoleon (Google-style docstrings) takes the text before the first colon of a constant's or a
property's docstring for its type: ``"The 9 edges of Fig. 3a: ..."`` would become a type named
"The 9 edges of Fig. 3a". The library gives types in signatures and annotations, never there,
so these docstrings are kept as written: saved before Napoleon reads them, put back after.
"""

from __future__ import annotations

from typing import Any

from sphinx.application import Sphinx

_PROSE = ("data", "attribute", "property")
_saved: dict[str, list[str]] = {}


def _save(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    if what in _PROSE:
        _saved[name] = list(lines)


def _restore(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    if what in _PROSE and name in _saved:
        lines[:] = _saved.pop(name)


def setup(app: Sphinx) -> dict[str, Any]:
    app.setup_extension("sphinx.ext.napoleon")
    app.connect("autodoc-process-docstring", _save, priority=400)  # Napoleon runs at 500
    app.connect("autodoc-process-docstring", _restore, priority=600)
    return {"parallel_read_safe": False, "parallel_write_safe": True}
