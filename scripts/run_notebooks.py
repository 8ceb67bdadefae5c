"""Execute chapters in place and save them with outputs and widget state.

The book is built from committed outputs (Jupyter Book does not execute the chapters), and nbval
re-runs the chapters to check that those outputs still reproduce. After changing a chapter or
the library, refresh its outputs with:

    .venv/bin/python scripts/run_notebooks.py notebooks/01_data.ipynb [...]

(under ``xvfb-run -a`` when there is no display: chapters take napari screenshots).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def run(path: Path, timeout: int = 1200) -> float:
    """Execute one notebook in its own folder and write it back (atomically); return seconds."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=True,
                            coalesce_streams=True,  # one stdout block per cell, however the kernel flushed it
                            resources={"metadata": {"path": str(path.parent)}})
    t0 = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - t0
    tmp = path.with_name(f".{path.name}.tmp")
    nbformat.write(nb, tmp)
    tmp.replace(path)
    return seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("notebooks", nargs="+", type=Path)
    args = p.parse_args(argv)
    for nb in args.notebooks:
        print(f"{nb}: ", end="", flush=True)
        print(f"{run(nb):.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
