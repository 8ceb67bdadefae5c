"""Baselines of Table 1: the paper's in-house ones on the IG-RPN's backbone, and an external peer.

In-house baselines: "we replace the detection part of our model with them" (NOTES item 10).
Each uses the VGG blocks of Fig. 2 (:mod:`rpn_lib.model`) and is a
:class:`rpn_lib.methods.Method`, so it shares the data pipeline, augmentation, optimiser,
schedule, checkpoints and exact resume (:func:`rpn_lib.train.train` with ``method=...``), the
detector (:class:`rpn_lib.detect.Detector`) and the metrics (:func:`rpn_lib.evaluate.evaluate`).

=========================================  ===============  ====================================
module                                     method name      detection part
=========================================  ===============  ====================================
:mod:`rpn_lib.baselines.ssd`               ``ssd``          anchor heads on two block maps
:mod:`rpn_lib.baselines.faster_rcnn`       ``faster-rcnn``  objectness RPN, 3D RoI Align,
                                                            K+1-class head with box refinement
:mod:`rpn_lib.baselines.heatmap`           ``heatmap``      decoder to Gaussian heatmaps
                                                            (Payer et al. 2016)
=========================================  ===============  ====================================

Shared pieces: :mod:`rpn_lib.baselines.common` (the encoder without the fusion, per-class
candidate selection) and :mod:`rpn_lib.baselines.roi_align` (3D RoI Align).

The external peer, MONAI's RetinaNet (:mod:`rpn_lib.baselines.retinanet_peer`), is trained
through MONAI's own API and needs the optional ``[peers]`` extra.

Nothing is imported here, so that importing one baseline does not import the others.
"""
