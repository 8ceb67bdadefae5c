"""Draw the README's picture: a synthetic 1.3 mm volume with its five landmarks and boxes.

    .venv/bin/python scripts/make_readme_figure.py   # writes book/figures/synthetic_case.png
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402

from rpn_lib.data.synth import generate_from_preset  # noqa: E402
from rpn_lib.fileio import atomic_path  # noqa: E402
from rpn_lib.landmarks import box_size_vox  # noqa: E402
from rpn_lib.viz.planes import plot_orthogonal_planes  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "book" / "figures" / "synthetic_case.png"


def main() -> None:
    case = generate_from_preset(1, "paper")
    sizes = np.asarray(box_size_vox(case.spacing_mm))
    boxes = np.concatenate([case.landmarks_vox, sizes[:, None].repeat(3, 1)], axis=1)
    fig = plot_orthogonal_planes(case.volume, landmarks_vox=case.landmarks_vox, boxes_vox=boxes,
                                 spacing_mm=case.spacing_mm,
                                 title="synthetic fetal face, 128^3 voxels at 1.3 mm: five landmarks and their boxes")
    with atomic_path(OUT) as tmp:
        fig.savefig(tmp, dpi=90, bbox_inches="tight", format="png")
    print(OUT)


if __name__ == "__main__":
    main()
