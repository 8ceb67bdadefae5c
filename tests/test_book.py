"""The book builds strictly from the committed outputs and renders offline in a browser.

The build here does not execute the chapters (nbval does that, against the same outputs); it
checks that the committed notebooks and pages make a book with no warning, that no page loads
a script from the network, and, in headless Chromium, that math and widgets rendered.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def built_book(tmp_path_factory: pytest.TempPathFactory) -> Path:
    subprocess.run(["bash", str(ROOT / "scripts" / "vendor_js.sh")], cwd=ROOT, check=True)
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    cfg["execute"]["execute_notebooks"] = "off"
    # local extensions are found relative to the configuration file, which moves here
    cfg["sphinx"]["local_extensions"] = {k: str(ROOT / v) for k, v in cfg["sphinx"]["local_extensions"].items()}
    out = tmp_path_factory.mktemp("book")
    cfg_path = out / "_config.yml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))  # keep require.js before the widget manager
    jb = Path(sys.executable).with_name("jupyter-book")
    proc = subprocess.run([str(jb), "build", "-W", "-n", "--keep-going", "--quiet", "--config", str(cfg_path),
                           "--path-output", str(out), str(ROOT)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    html = out / "_build" / "html"
    assert (html / "index.html").exists()
    return html


def _chapters() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [c["file"] for c in toc["chapters"] if c["file"].startswith("notebooks/")]


CODE_COLUMNS = 88
"""Longest code line of a chapter: what the book's stylesheet fits in its text column."""


def test_chapter_code_lines_fit_the_column() -> None:
    long = [f"{chapter} {cell['id']}: {len(line)} chars"
            for chapter in _chapters()
            for cell in json.loads((ROOT / f"{chapter}.ipynb").read_text())["cells"]
            if cell["cell_type"] == "code"
            for line in "".join(cell["source"]).splitlines() if len(line) > CODE_COLUMNS]
    assert not long, long


def test_the_librarys_quick_start_runs_as_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The code of the reference's "Five landmarks from a NIfTI file", run as it is printed, in
    a folder with the repository's models and a synthetic face saved as ``face.nii.gz``."""
    from rpn_lib.data import synth
    from rpn_lib.data.io import load_landmarks, save_volume

    page = (ROOT / "book" / "api" / "index.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    assert len(blocks) == 1
    case = synth.generate_from_preset(11, "cpu-small")
    save_volume(tmp_path / "face.nii.gz", case.volume, case.affine)
    (tmp_path / "models").symlink_to(ROOT / "models")
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "book/api/index.md", "exec"), {})
    found = load_landmarks(tmp_path / "face.mrk.json")
    assert found.shape == (5, 3)
    assert np.linalg.norm(found - case.landmarks_world, axis=1).mean() < 10  # mm: it found the face


def test_the_reference_documents_every_module() -> None:
    pages = "".join(p.read_text() for p in (ROOT / "book" / "api").glob("*.md"))
    documented = set(re.findall(r"automodule:: ([\w.]+)", pages))
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
               for p in (ROOT / "rpn_lib").rglob("*.py")}
    assert modules - documented == {"rpn_lib.cli", "rpn_lib.__main__"}  # the command line: its --help
    assert documented <= modules


def test_every_chapter_is_built(built_book: Path) -> None:
    for chapter in _chapters():
        assert (built_book / f"{chapter}.html").exists(), chapter


def test_no_page_loads_scripts_from_the_network(built_book: Path) -> None:
    for page in built_book.rglob("*.html"):
        text = page.read_text(errors="replace")
        remote = re.findall(r"<script[^>]+src=\"(https?:[^\"]+)\"", text)
        assert not remote, f"{page.name} loads {remote}"


def test_chapters_link_the_librarys_names_to_the_reference(built_book: Path) -> None:
    page = (built_book / "notebooks" / "04_iou_balanced_loss.html").read_text()
    link = re.search(r'href="([^"#]+)#(rpn_lib\.losses\.iou_balanced_weights)"', page)
    assert link, "the chapter's `rpn_lib.losses.iou_balanced_weights` is not a link"
    target = (built_book / "notebooks" / link.group(1)).resolve()
    assert f'id="{link.group(2)}"' in target.read_text()
    unlinked, linked = set(), 0
    for chapter in _chapters():
        text = (built_book / f"{chapter}.html").read_text()
        for m in re.finditer(r'(<a [^>]*>)?<code class="docutils literal notranslate"><span class="pre">'
                             r'(rpn_lib\.[\w.]+)(?:\(\))?</span></code>', text):
            if m.group(1):
                linked += 1
            else:
                unlinked.add(m.group(2))
    assert unlinked <= {"rpn_lib.cli"}, unlinked  # the command line: its --help, not the reference
    assert linked > 100


def test_the_command_line_page_prints_every_commands_help(built_book: Path) -> None:
    from rpn_lib.cli import command_parsers

    commands = command_parsers()
    page = (ROOT / "book" / "api" / "cli.md").read_text()
    assert sorted(re.findall(r"```\{rpn-lib-help\} ([\w-]+)", page)) == sorted(commands)
    built = html.unescape(re.sub(r"<[^>]+>", "", (built_book / "book" / "api" / "cli.html").read_text()))
    for command in commands:
        assert f"usage: rpn-lib {command} [-h]" in built, command
    assert "--checkpoint-every STEPS" in built and "(default: None)" not in built


def _markdown_tables_printed(chapter: str) -> int:
    """How many ``text/markdown`` outputs of a chapter hold a Markdown table."""
    nb = json.loads((ROOT / f"{chapter}.ipynb").read_text())
    found = 0
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            text = "".join(out.get("data", {}).get("text/markdown", ""))
            found += bool(re.search(r"^\|(\s*:?-+:?\s*\|)+\s*$", text, flags=re.M))
    return found


def test_pages_load_the_books_stylesheet(built_book: Path) -> None:
    assert "div.cell_input pre" in (built_book / "_static" / "ig-rpn.css").read_text()
    for chapter in _chapters():
        assert '_static/ig-rpn.css' in (built_book / f"{chapter}.html").read_text(), chapter


def test_tables_that_cells_print_render_as_tables(built_book: Path) -> None:
    checked = 0
    for chapter in _chapters():
        expected = _markdown_tables_printed(chapter)
        if not expected:
            continue
        html = (built_book / f"{chapter}.html").read_text()
        outputs = html.split('<div class="cell_output')[1:]
        assert not [o for o in outputs if re.search(r"<p>\|", o)], f"{chapter}: a printed table was left as text"
        assert sum(o.count("<table") for o in outputs) >= expected, chapter
        checked += 1
    assert checked  # chapters 1 to 3 print tables


_OVERFLOW_PROBE = """<script>
setTimeout(() => {
  const wide = [...document.querySelectorAll("div.cell_input pre, div.cell_output pre, div.highlight-text pre")]
    .filter(pre => pre.scrollWidth > pre.clientWidth + 1)
    .map(pre => pre.textContent.split("\\n").reduce((a, b) => (b.length > a.length ? b : a), ""));
  const out = document.createElement("pre");
  out.id = "overflow-probe";
  out.textContent = JSON.stringify(wide);
  document.body.appendChild(out);
}, 3000);
</script>"""
"""Appended to a chapter's page: after 3 s (of Chromium's virtual time), lists the longest line
of every code cell or output that is wider than its box."""


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (make test installs it)")
def test_code_and_outputs_fit_the_text_column(built_book: Path, tmp_path: Path) -> None:
    """At a 1366-pixel-wide window (a common laptop screen), no code cell of any chapter, and
    no command's help in the reference, is wider than the text column (it would scroll
    sideways); printed outputs wrap."""
    wide: dict[str, list[str]] = {}
    for chapter in [*_chapters(), "book/api/cli"]:
        page = built_book / f"{chapter}.html"
        probe = page.with_name(f"_probe_{page.name}")
        probe.write_text(page.read_text().replace("</body>", _OVERFLOW_PROBE + "</body>"))
        dom, _ = _render(probe, tmp_path, window=(1366, 900), screenshot=False)
        found = re.search(r'<pre id="overflow-probe">(.*?)</pre>', dom, flags=re.S)
        assert found, f"{chapter}: the probe did not run"
        lines = json.loads(html.unescape(found.group(1)))
        if lines:
            wide[chapter] = [f"{len(line)} chars: {line.strip()[:70]}" for line in lines]
    assert not wide, json.dumps(wide, indent=1, ensure_ascii=False)


def _render(page: Path, tmp: Path, window: tuple[int, int] = (1280, 1600),
            screenshot: bool = True) -> tuple[str, np.ndarray | None]:
    """The page's DOM after its scripts ran, and a screenshot (RGBA array) unless not wanted."""
    from matplotlib.image import imread

    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
             f"--user-data-dir={tmp / 'profile'}", f"--window-size={window[0]},{window[1]}",
             "--virtual-time-budget=15000"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    if not screenshot:
        return dom, None
    shot = tmp / f"{page.stem}.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    return dom, imread(shot)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (make test installs it)")
def test_pages_render_offline_with_math_and_widgets(built_book: Path, tmp_path: Path) -> None:
    dom, img = _render(built_book / "index.html", tmp_path)
    assert "IG-RPN" in dom
    assert img.shape[0] > 500 and img[..., :3].std() > 0.05  # not a blank page
    data_page = built_book / "notebooks" / "01_data.html"
    dom, img = _render(data_page, tmp_path)
    assert "mjx-container" in dom, "MathJax did not typeset the page"
    assert "widget-slider" in dom, "the widgets did not render"
    assert img[..., :3].std() > 0.05
