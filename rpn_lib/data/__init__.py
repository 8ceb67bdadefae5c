"""Data: the synthetic benchmark (``synth``, built from ``phantom`` and ``ultrasound``), the
dataset folder (``dataset``), NIfTI and landmark files (``io``), voxel and world geometry
(``geometry``), and the path from a file to the model's input grid (``preprocess``).
"""
