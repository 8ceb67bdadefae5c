"""The book's Sphinx extension: how the library's reference reads, and links to it.

* Napoleon (Google-style docstrings) takes the text before the first colon of a constant's or
  a property's docstring for its type: ``"The 9 edges of Fig. 3a: ..."`` would become a type
  named "The 9 edges of Fig. 3a". The library gives types in signatures and annotations, never
  there, so these docstrings are kept as written: saved before Napoleon reads them, put back
  after.
* In every page, inline code that is the full name of something the reference documents
  (```rpn_lib.losses.iou_balanced_weights``` in a chapter's text, with or without ``()``)
  becomes a link to its entry, so that a reader goes from a chapter to the function in one
  click. The chapters stay plain Markdown, readable as they are in Jupyter.
* The directive ``rpn-lib-help`` prints the ``--help`` of one ``rpn-lib`` command (or, with no
  argument, of ``rpn-lib`` itself) as the installed package gives it, at 88 columns: the
  reference of the command line cannot drift from the code.
"""

from __future__ import annotations

import importlib
import os
import re
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

_PROSE = ("data", "attribute", "property")
_saved: dict[str, list[str]] = {}
_FULL_NAME = re.compile(r"^(rpn_lib(?:\.\w+)+)(?:\(\))?$")


def _save(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    if what in _PROSE:
        _saved[name] = list(lines)


def _restore(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    if what in _PROSE and name in _saved:
        lines[:] = _saved.pop(name)


def _canonical(name: str) -> str | None:
    """Where a re-exported name is defined (``rpn_lib.viz.show_case`` ->
    ``rpn_lib.viz.napari_view.show_case``), or None when it cannot be imported."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
        return f"{module}.{qualname}" if module and qualname else None
    return None


def _reexported(objects: dict[str, Any], name: str) -> Any:
    """The one entry below ``name``'s package with ``name``'s last part (a constant re-exported
    by a package, such as ``rpn_lib.viz.CLASS_COLORS``: it has no ``__module__`` for
    :func:`_canonical` to follow), or None."""
    package, _, last = name.rpartition(".")
    found = [v for k, v in objects.items() if k.startswith(package + ".") and k.endswith("." + last)]
    return found[0] if len(found) == 1 else None


def _link_full_names(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    objects = app.env.get_domain("py").objects
    for literal in list(doctree.findall(nodes.literal)):
        if isinstance(literal.parent, (nodes.reference, nodes.literal_block)):
            continue
        found = _FULL_NAME.match(literal.astext().strip())
        if not found:
            continue
        name = found.group(1)
        entry = objects.get(name) or objects.get(_canonical(name) or "") or _reexported(objects, name)
        if entry is None or entry.docname == docname and entry.objtype == "module":
            continue
        uri = app.builder.get_relative_uri(docname, entry.docname) + "#" + entry.node_id
        link = nodes.reference("", "", internal=True, refuri=uri, reftitle=name)
        literal.replace_self(link)
        link.append(literal)


HELP_COLUMNS = 88
"""Width of the printed help: the book's code column."""


def command_help(command: str | None) -> str:
    """``rpn-lib [COMMAND] --help`` as text, wrapped at :data:`HELP_COLUMNS`."""
    from rpn_lib.cli import build_parser, command_parsers

    parser = command_parsers().get(command) if command else build_parser()
    if parser is None:
        raise ValueError(f"rpn-lib has no command {command!r}")
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(HELP_COLUMNS)  # argparse reads the width from it
    try:
        return parser.format_help()
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before


class CommandHelp(SphinxDirective):
    """``rpn-lib-help [COMMAND]``: the command's ``--help`` as a literal block."""

    optional_arguments = 1

    def run(self) -> list[nodes.Node]:
        text = command_help(self.arguments[0] if self.arguments else None)
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


def setup(app: Sphinx) -> dict[str, Any]:
    app.setup_extension("sphinx.ext.napoleon")
    app.connect("autodoc-process-docstring", _save, priority=400)  # Napoleon runs at 500
    app.connect("autodoc-process-docstring", _restore, priority=600)
    app.connect("doctree-resolved", _link_full_names)
    app.add_directive("rpn-lib-help", CommandHelp)
    return {"parallel_read_safe": False, "parallel_write_safe": True}
