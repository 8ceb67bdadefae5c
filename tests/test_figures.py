"""Tests of rpn_lib.viz.figures."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpn_lib.data import synth
from rpn_lib.viz.figures import face_rotation

angles = st.floats(-360.0, 360.0, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(tilt=st.floats(0.0, 180.0), roll=angles, az=angles)
def test_face_rotation_is_proper_and_tilt_is_the_angle_to_the_probe(tilt, roll, az):
    r = face_rotation(tilt, roll, az)
    assert np.allclose(r.T @ r, np.eye(3), atol=1e-12)
    assert np.linalg.det(r) == pytest.approx(1.0)
    anterior = r[:, 1]
    to_probe = np.array([-1.0, 0.0, 0.0])
    assert np.degrees(np.arccos(np.clip(anterior @ to_probe, -1, 1))) == pytest.approx(tilt, abs=1e-6)
    # roll turns the face about its anterior axis: the anterior axis does not move
    assert np.allclose(face_rotation(tilt, 0.0, az)[:, 1], anterior)


def test_face_rotation_hand_values():
    r = face_rotation()
    assert np.allclose(r[:, 0], [0, 1, 0]) and np.allclose(r[:, 1], [-1, 0, 0]) and np.allclose(r[:, 2], [0, 0, 1])
    assert np.allclose(face_rotation(roll_deg=90)[:, 2], [0, 1, 0])       # top of the head to +y
    assert np.allclose(face_rotation(roll_deg=90)[:, 1], [-1, 0, 0])
    assert np.allclose(face_rotation(tilt_deg=90)[:, 1], [0, 1, 0])       # face turned sideways
    assert np.allclose(face_rotation(tilt_deg=90, azimuth_deg=90)[:, 1], [0, 0, 1])  # looks up
    assert np.allclose(face_rotation(tilt_deg=180)[:, 1], [1, 0, 0])      # back to the probe


def test_face_rotation_places_the_phantom():
    rot = face_rotation(tilt_deg=40, roll_deg=-30)
    scene, _ = synth.sample_scene(5, (166.4,) * 3, rotation=rot)
    assert np.allclose(scene.face.rotation, rot)
    # the eyes lie on the face's left-right axis: their difference is along the right column
    lm = scene.face.landmarks_world
    d = lm[2] - lm[0]  # right eye - left eye
    assert d @ rot[:, 0] > 0.9 * np.linalg.norm(d)


def test_plot_network_diagram_draws_every_block():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, Rectangle

    from rpn_lib.model import IGRPN
    from rpn_lib.receptive_field import block_table, layer_table
    from rpn_lib.viz.figures import plot_network_diagram

    blocks = block_table(layer_table(IGRPN(width=4), (32, 32, 32)))
    fig = plot_network_diagram(blocks, (32, 32, 32))
    ax = fig.axes[0]
    rects = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert [r.get_label() for r in rects] == ["input", "block1", "block2", "block3", "block4", "fused",
                                               "classes", "deltas"]
    # heights follow the spatial size: each pooling halves the side, the fused map is block 3's
    h = {r.get_label(): r.get_height() for r in rects}
    assert h["block1"] > h["block2"] > h["block3"] > h["block4"]
    assert h["fused"] == pytest.approx(h["block3"])
    assert sum(isinstance(p, FancyArrowPatch) for p in ax.patches) == 8
    texts = " ".join(t.get_text() for t in ax.texts)
    assert "block4\n32 × 4×4×4\nstride 8, RF 68" in texts
    assert "384 × 8×8×8" in texts and "= 64 anchors × 6" in texts
    plt.close(fig)
    with pytest.raises(ValueError):
        plot_network_diagram(blocks[:3], (32, 32, 32))
