"""Shared pytest setup: napari reads and writes its settings in a throw-away file.

Without this napari stores window sizes under the home folder, and screenshot sizes would
change from one run to the next. Must happen before anything imports napari.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

if "NAPARI_CONFIG" not in os.environ:
    _napari_dir = tempfile.mkdtemp(prefix="rpn-lib-napari-")
    atexit.register(shutil.rmtree, _napari_dir, ignore_errors=True)
    os.environ["NAPARI_CONFIG"] = str(Path(_napari_dir) / "settings.yaml")
