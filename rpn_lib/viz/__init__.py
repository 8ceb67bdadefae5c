"""Viewing helpers: orthogonal slices with matplotlib, 3D scenes with napari.

``rpn_lib.viz.planes`` needs only matplotlib. ``rpn_lib.viz.napari_view`` imports napari inside
its functions, so importing this package needs neither napari nor Qt nor a display.
"""

from rpn_lib.viz.napari_view import (
    add_boxes,
    add_points,
    add_volume,
    close_viewer,
    is_blank,
    screenshot,
    show_case,
)
from rpn_lib.viz.planes import (
    CLASS_COLORS,
    box_edges_vox,
    plot_orthogonal_planes,
    plot_slice_with_boxes,
)

__all__ = [
    "CLASS_COLORS", "box_edges_vox", "plot_orthogonal_planes", "plot_slice_with_boxes",
    "add_volume", "add_boxes", "add_points", "show_case", "screenshot", "is_blank", "close_viewer",
]
