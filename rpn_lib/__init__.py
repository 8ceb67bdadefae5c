"""rpn_lib: 3D region proposal network with graph prior and IoU-balanced loss for landmarks.

A thin library behind the ig-rpn-book: synthetic 3D fetal-face ultrasound, 3D boxes and
anchors, the IG-RPN model and loss, the distance-ratio graph prior, training, inference,
metrics, I/O, viewers and a command line.

Box convention (the only one in the library): a box is a row ``(cz, cy, cx, d, h, w)`` of an
``(N, 6)`` array, centre and size in voxel units, axis order of the volume array
``(D, H, W)`` = axes 0, 1, 2 (for a NIfTI these are the affine's i, j, k). A voxel's centre
sits at integer coordinates.
"""

from rpn_lib.errors import DataError, DeviceError, ModelError, RpnLibError
from rpn_lib.landmarks import LANDMARK_NAMES, NUM_LANDMARKS
from rpn_lib.presets import PRESETS, Preset, get_preset

__version__ = "0.1.0"

__all__ = [
    "DataError", "DeviceError", "ModelError", "RpnLibError", "LANDMARK_NAMES", "NUM_LANDMARKS",
    "PRESETS", "Preset", "get_preset", "__version__",
]
