"""Repository-wide pytest settings: how nbval compares the chapters' outputs.

Outputs that cannot be reproduced byte for byte are not compared: widget views carry random
model ids, and HTML/JavaScript reprs embed them too. Images are never compared by nbval.
Cells whose text output cannot be deterministic (timings, napari screenshots) carry an
``# NBVAL_IGNORE_OUTPUT`` comment with a reason beside it in the notebook.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# napari stores window sizes under the home folder unless told otherwise; a fresh settings
# file per run keeps screenshot sizes stable.
os.environ.setdefault("NAPARI_CONFIG", str(Path(tempfile.mkdtemp(prefix="napari-")) / "settings.yaml"))


def pytest_collectstart(collector):  # noqa: ANN001, ANN201 - pytest hook
    if getattr(collector, "fspath", None) is not None and collector.fspath.ext == ".ipynb":
        collector.skip_compare += (
            "text/html",
            "application/javascript",
            "application/vnd.jupyter.widget-view+json",
            "stderr",
        )
