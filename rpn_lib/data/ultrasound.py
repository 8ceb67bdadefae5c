"""Ultrasound image formation for the synthetic benchmark: tissue maps -> 8-bit 3D volume.

The model is the classical convolution model of B-mode ultrasound, simplified so that a
64^3 volume takes a few tens of milliseconds:

1. **Tissue maps** (from :mod:`rpn_lib.data.phantom`): per voxel an echogenicity (scattering
   amplitude), an attenuation (dB/mm, one way) and a reflectivity (for specular echoes),
   from :data:`TISSUE_ACOUSTICS` with partial-volume blending.
2. **Scatterers** (:func:`scatterer_field`): complex Gaussian (circular) scatterers times the
   echogenicity (their envelope is Rayleigh distributed: fully developed speckle), mixed with
   a coherent part (``1 - speckle`` of the power) and a specular echo proportional to the
   reflectivity's gradient along the beam (bright tissue/fluid boundaries facing the probe).
3. **Attenuation and shadows** (:func:`ray_attenuation_db`): the attenuation is integrated
   along straight rays from the probe's apex (so shadows behind bone fan out like a real
   sector scan), doubled for the round trip and applied to the scatterers; a time-gain
   compensation (TGC) adds a gain growing linearly with depth. The attenuation saturates
   softly (:func:`saturate_db`) so that shadows are deep but not absolute.
4. **Noise**: additive complex Gaussian electronic noise (amplified by the TGC).
5. **Point-spread function** (:func:`apply_psf`): complex baseband (IQ) model. The RF pulse, a
   Gaussian-modulated cosine along the beam, is represented by its complex envelope, a
   Gaussian; laterally the beam is Gaussian too, wider than axially. Convolution is separable
   (``scipy.ndimage.gaussian_filter`` on the real and imaginary parts).
6. **Envelope and log compression** (:func:`log_compress`): ``|IQ|`` (the envelope of the
   analytic RF signal), ``20 log10``, gain, dynamic range, a gamma for contrast, 0-255.
7. **Field of view**: a 3D probe's sector (:class:`Probe`): 0 outside, at least 1 inside
   (so that 0 always means "not imaged").

Simplifications (choices): the beam axis is array axis 0 (world +R) for the PSF and the
specular term, i.e. the fan's rays are treated as parallel there (they deviate by up to ~40
degrees at the sector's edges); attenuation, shadows, TGC and the field of view follow the
true rays from the apex. The probe sits above the volume on the low-index side of axis 0.
PSF widths are given in mm with a floor in voxels (axial >= 0.4, lateral >= 0.6 voxel) so
that speckle stays resolved on coarse grids.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from rpn_lib.data.phantom import Tissue

__all__ = [
    "Difficulty", "DIFFICULTIES", "Probe", "Acquisition", "TISSUE_ACOUSTICS", "tissue_table",
    "sample_probe", "sample_acquisition", "scatterer_field", "ray_attenuation_db", "saturate_db",
    "apply_psf",
    "log_compress", "simulate",
]

# echogenicity (amplitude, 1 = bone), attenuation dB/mm one way, reflectivity (specular)
TISSUE_ACOUSTICS: dict[Tissue, tuple[float, float, float]] = {
    Tissue.FLUID: (0.001, 0.002, 0.00),
    Tissue.MATERNAL_FAT: (0.05, 0.06, 0.20),
    Tissue.FASCIA: (0.45, 0.10, 0.50),
    Tissue.UTERUS: (0.10, 0.10, 0.30),
    Tissue.PLACENTA: (0.15, 0.08, 0.30),
    Tissue.SOFT_TISSUE: (0.055, 0.08, 0.25),
    Tissue.SKIN: (0.25, 0.10, 0.35),
    Tissue.BRAIN: (0.030, 0.05, 0.20),
    Tissue.MIDLINE: (0.30, 0.08, 0.35),
    Tissue.BONE: (0.90, 2.00, 1.00),
    Tissue.EYE_GLOBE: (0.002, 0.005, 0.18),
    Tissue.EYE_RIM: (0.10, 0.08, 0.22),
    Tissue.LENS: (0.08, 0.05, 0.22),
    Tissue.CORD: (0.13, 0.08, 0.30),
    Tissue.VESSEL: (0.006, 0.01, 0.15),
}
"""Per tissue: echogenicity (scattering amplitude; bone = 0.9), attenuation in dB/mm one way
(bone's value is replaced by the difficulty's), reflectivity (drives specular echoes)."""


@dataclass(frozen=True)
class Difficulty:
    """A named level of image quality and scene clutter.

    Attributes:
        speckle: share of the echo power that is speckle (1 = fully developed speckle).
        noise_db: electronic noise level, dB relative to bone's echo (range drawn +-3 dB).
        bone_db_per_mm: bone attenuation, dB/mm one way (sets the acoustic shadows).
        distractor_prob: probability of a hand, and independently of a cord, near the face.
        max_tilt_deg: largest angle between the face's anterior axis and the direction to
            the probe (180 = uniformly random orientation).
        dynamic_range_db: range of the log compression's dynamic range (lower contrast when
            wider).
        gain_db: the random overall gain is uniform in +- this.
        contrast: range of the tissue-contrast exponent (< 1 flattens echogenicity
            differences between tissues).
        psf_scale: multiplies the PSF widths (blur).
        shadow_max_db: one-way attenuation saturates softly at this value (see
            :func:`saturate_db`), so that no region is attenuated beyond ``2 *`` it.
    """

    speckle: float
    noise_db: float
    bone_db_per_mm: float
    distractor_prob: float
    max_tilt_deg: float
    dynamic_range_db: tuple[float, float]
    gain_db: float
    contrast: tuple[float, float]
    psf_scale: float
    shadow_max_db: float

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


DIFFICULTIES: dict[str, Difficulty] = {
    "easy": Difficulty(speckle=0.6, noise_db=-60.0, bone_db_per_mm=1.5, distractor_prob=0.0,
                       max_tilt_deg=35.0, dynamic_range_db=(42.0, 48.0), gain_db=2.0,
                       contrast=(1.0, 1.0), psf_scale=0.9, shadow_max_db=8.0),
    "standard": Difficulty(speckle=0.9, noise_db=-55.0, bone_db_per_mm=3.0, distractor_prob=0.25,
                           max_tilt_deg=60.0, dynamic_range_db=(44.0, 52.0), gain_db=4.0,
                           contrast=(0.85, 1.0), psf_scale=1.0, shadow_max_db=11.0),
    "hard": Difficulty(speckle=1.0, noise_db=-50.0, bone_db_per_mm=3.5, distractor_prob=0.5,
                       max_tilt_deg=120.0, dynamic_range_db=(46.0, 58.0), gain_db=6.0,
                       contrast=(0.7, 0.9), psf_scale=1.3, shadow_max_db=14.0),
}
"""The three named difficulty levels.

The face's tilt away from the probe is the largest single source of difficulty. A sonographer
recording a 3D face volume aims the probe at the face through amniotic fluid, so ``standard``
keeps the face within 60 degrees of the probe direction (any roll about it); ``hard`` allows
faces turned away behind the skull (120 degrees)."""


@dataclass
class Probe:
    """A 3D probe's sector field of view (a pyramid of rays from a virtual apex).

    The beam points along world ``+x`` (array axis 0). A world point ``p`` with
    ``d = p - apex_mm`` is inside when ``d_x > 0``, ``|atan(d_y / d_x)| <= half_angles_deg[0]``,
    ``|atan(d_z / d_x)| <= half_angles_deg[1]`` and ``near_mm <= |d| <= far_mm`` (curved near
    and far ends, as in a curved-array probe swept mechanically).
    """

    apex_mm: np.ndarray
    half_angles_deg: tuple[float, float]
    near_mm: float
    far_mm: float

    def __post_init__(self) -> None:
        self.apex_mm = np.asarray(self.apex_mm, dtype=np.float64).reshape(3)

    @property
    def beam_dir(self) -> np.ndarray:
        return np.array([1.0, 0.0, 0.0])

    def inside_margin_mm(self, points_mm: np.ndarray) -> np.ndarray:
        """``(N,)`` distance (mm, lower bound) from each point to the sector's boundary,
        negative outside."""
        d = np.atleast_2d(np.asarray(points_mm, float)) - self.apex_mm
        t1, t2 = np.deg2rad(self.half_angles_deg)
        r = np.linalg.norm(d, axis=1)
        m = np.stack([
            np.sin(t1) * d[:, 0] - np.cos(t1) * np.abs(d[:, 1]),
            np.sin(t2) * d[:, 0] - np.cos(t2) * np.abs(d[:, 2]),
            r - self.near_mm, self.far_mm - r,
        ], axis=1)
        return m.min(axis=1)

    def mask(self, axes_mm: Sequence[np.ndarray]) -> np.ndarray:
        """``(D, H, W)`` bool: voxel centres inside the sector."""
        x = np.asarray(axes_mm[0], float)[:, None, None] - self.apex_mm[0]
        y = np.asarray(axes_mm[1], float)[None, :, None] - self.apex_mm[1]
        z = np.asarray(axes_mm[2], float)[None, None, :] - self.apex_mm[2]
        t1, t2 = np.tan(np.deg2rad(self.half_angles_deg))
        r2 = x * x + y * y + z * z
        return ((x > 0) & (np.abs(y) <= x * t1) & (np.abs(z) <= x * t2)
                & (r2 >= self.near_mm ** 2) & (r2 <= self.far_mm ** 2))

    def to_dict(self) -> dict[str, Any]:
        return {"apex_mm": self.apex_mm.tolist(), "half_angles_deg": list(self.half_angles_deg),
                "near_mm": self.near_mm, "far_mm": self.far_mm}


def sample_probe(rng: np.random.Generator, fov_mm: Sequence[float]) -> Probe:
    """A probe above a volume of extent ``fov_mm`` centred at the world origin.

    The apex lies 8-30 mm above the volume's top face (low axis-0 side), within +-8 mm of
    the axis; the sector's half-angles are 34-42 and 30-40 degrees; the image starts at the
    apex distance (the probe's surface) and ends 92-104 % of the volume depth below it.
    """
    f = np.asarray(fov_mm, float)
    a = float(rng.uniform(8.0, 30.0))
    apex = np.array([-f[0] / 2 - a, rng.uniform(-8.0, 8.0), rng.uniform(-8.0, 8.0)])
    return Probe(apex_mm=apex,
                 half_angles_deg=(float(rng.uniform(34.0, 42.0)), float(rng.uniform(30.0, 40.0))),
                 near_mm=a, far_mm=a + f[0] * float(rng.uniform(0.92, 1.04)))


@dataclass
class Acquisition:
    """Imaging parameters of one volume (all drawn by :func:`sample_acquisition`).

    Attributes:
        gain_db: overall gain.
        dynamic_range_db: log-compression dynamic range (echo 1 at 0 dB gain -> 255).
        gamma: exponent applied to the compressed 0-1 image (contrast).
        noise_db: electronic noise RMS in dB re bone echo.
        speckle: speckle share of the echo power.
        psf_axial_mm, psf_lateral_mm: Gaussian PSF standard deviations (before the voxel floor).
        tgc_db_per_mm: time-gain compensation slope (two way).
        bone_db_per_mm: attenuation of bone, dB/mm one way.
        contrast: tissue-contrast exponent on the echogenicity (relative to soft tissue).
        specular: weight of the specular (boundary) echoes.
        shadow_max_db: soft ceiling of the one-way attenuation (dB).
    """

    gain_db: float = 0.0
    dynamic_range_db: float = 48.0
    gamma: float = 1.0
    noise_db: float = -55.0
    speckle: float = 0.9
    psf_axial_mm: float = 0.5
    psf_lateral_mm: float = 1.0
    tgc_db_per_mm: float = 0.03
    bone_db_per_mm: float = 3.0
    contrast: float = 1.0
    specular: float = 0.6
    shadow_max_db: float = 11.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def sample_acquisition(rng: np.random.Generator, difficulty: str | Difficulty = "standard") -> Acquisition:
    """Random imaging parameters for a difficulty level."""
    d = DIFFICULTIES[difficulty] if isinstance(difficulty, str) else difficulty
    return Acquisition(
        gain_db=float(rng.uniform(-d.gain_db, d.gain_db)),
        dynamic_range_db=float(rng.uniform(*d.dynamic_range_db)),
        gamma=float(rng.uniform(0.85, 1.15)),
        noise_db=float(d.noise_db + rng.uniform(-3.0, 3.0)),
        speckle=d.speckle,
        psf_axial_mm=float(0.5 * d.psf_scale * rng.uniform(0.85, 1.15)),
        psf_lateral_mm=float(1.0 * d.psf_scale * rng.uniform(0.85, 1.15)),
        tgc_db_per_mm=float(rng.uniform(0.01, 0.05)),
        bone_db_per_mm=float(d.bone_db_per_mm * rng.uniform(0.8, 1.2)),
        contrast=float(rng.uniform(*d.contrast)),
        specular=float(rng.uniform(0.4, 0.8)),
        shadow_max_db=d.shadow_max_db,
    )


def tissue_table(acq: Acquisition) -> np.ndarray:
    """``(len(Tissue), 3)`` float32 table (echogenicity, dB/mm, reflectivity) for ``acq``:
    bone attenuation from the acquisition, echogenicity contrast ``(e / e_soft) ** contrast``
    relative to soft tissue."""
    t = np.zeros((len(Tissue), 3), dtype=np.float32)
    for tissue, v in TISSUE_ACOUSTICS.items():
        t[int(tissue)] = v
    t[int(Tissue.BONE), 1] = acq.bone_db_per_mm
    e_soft = t[int(Tissue.SOFT_TISSUE), 0]
    t[:, 0] = e_soft * (t[:, 0] / e_soft) ** acq.contrast
    return t


# --------------------------------------------------------------------------------------------
# Steps of the image formation
# --------------------------------------------------------------------------------------------


def _gauss_kernel(sigma: float, truncate: float) -> np.ndarray:
    """The 1-D kernel ``scipy.ndimage.gaussian_filter1d`` uses (for the normalisations)."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def psf_sigmas_vox(acq: Acquisition, spacing_mm: float) -> tuple[float, float, float]:
    """PSF standard deviations in voxels along axes 0 (beam), 1, 2, with the voxel floor."""
    ax = max(acq.psf_axial_mm, 0.4 * spacing_mm) / spacing_mm
    lat = max(acq.psf_lateral_mm, 0.6 * spacing_mm) / spacing_mm
    return (ax, lat, lat)


_TRUNCATE = 3.0


def scatterer_field(maps: np.ndarray, acq: Acquisition, sigmas: Sequence[float],
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Complex scatterer amplitudes ``(re, im)``, each ``(D, H, W)`` float32.

    ``maps[0]`` is the echogenicity ``E`` and ``maps[2]`` the reflectivity ``Z``. The speckle
    part ``E sqrt(speckle) n / sqrt(sum h^2)`` (n complex normal, unit power) gives echo power
    ``speckle E^2`` after the unit-DC-gain PSF ``h``; the coherent part ``E sqrt(1 - speckle)``
    gives the rest; the specular part ``specular |dZ/dx0| / h0_max`` (``h0``: the axial
    kernel) makes a step of Z across a surface facing the probe an echo of peak about
    ``specular * dZ`` whatever the voxel size.
    """
    ks = [_gauss_kernel(s, _TRUNCATE) for s in sigmas]
    sum_h2 = float(np.prod([(k ** 2).sum() for k in ks]))
    h_max = float(ks[0].max())
    e = maps[0]
    shape = e.shape
    a = np.float32(np.sqrt(acq.speckle / 2.0 / sum_h2))
    re = rng.standard_normal(shape, dtype=np.float32)
    im = rng.standard_normal(shape, dtype=np.float32)
    re *= a
    re += np.float32(np.sqrt(max(0.0, 1.0 - acq.speckle)))
    re *= e
    im *= a
    im *= e
    z = maps[2]
    dz = np.zeros_like(z)
    dz[1:-1] = np.abs(z[2:] - z[:-2]) * np.float32(0.5)
    re += dz * np.float32(acq.specular / h_max)
    return re, im


def ray_attenuation_db(att: np.ndarray, axes_mm: Sequence[np.ndarray], probe: Probe) -> np.ndarray:
    """One-way attenuation (dB) accumulated from the volume's top face to each voxel along the
    straight ray from the probe's apex, ``(D, H, W)`` float32.

    The attenuation map is resampled onto a "beam grid" ``(i, u, v)``: slice ``i`` of the
    volume at lateral positions ``apex + (u, v) * depth_i``, so that a ray is a line of
    constant ``(u, v)``; there the integral is a cumulative sum over ``i`` (path length per
    slice ``spacing * sqrt(1 + u^2 + v^2)``, midpoint rule), and the result is resampled back.
    """
    ax = [np.asarray(a, np.float64) for a in axes_mm]
    sp = float(ax[0][1] - ax[0][0])
    depth = ax[0] - probe.apex_mm[0]                               # (D,) along the beam axis
    depth = np.maximum(depth, 1e-3)
    t1, t2 = np.tan(np.deg2rad(probe.half_angles_deg)) * 1.05
    nu, nv = att.shape[1], att.shape[2]
    u = np.linspace(-t1, t1, nu)
    v = np.linspace(-t2, t2, nv)
    D = att.shape[0]
    ii = np.broadcast_to(np.arange(D, dtype=np.float32)[:, None, None], (D, nu, nv))
    jj = ((probe.apex_mm[1] + u[None, :] * depth[:, None] - ax[1][0]) / sp).astype(np.float32)
    kk = ((probe.apex_mm[2] + v[None, :] * depth[:, None] - ax[2][0]) / sp).astype(np.float32)
    coords = np.stack([ii, np.broadcast_to(jj[:, :, None], (D, nu, nv)),
                       np.broadcast_to(kk[:, None, :], (D, nu, nv))])
    att_b = ndimage.map_coordinates(att, coords, order=1, mode="nearest", prefilter=False)
    ds = (sp * np.sqrt(1.0 + u[:, None] ** 2 + v[None, :] ** 2)).astype(np.float32)
    step = att_b * ds
    cum = np.cumsum(step, axis=0) - np.float32(0.5) * step
    # back to the voxel grid: u = lateral offset / depth
    H, W = att.shape[1], att.shape[2]
    du, dv = (u[1] - u[0]), (v[1] - v[0])
    iu = (((ax[1][None, :] - probe.apex_mm[1]) / depth[:, None] - u[0]) / du).astype(np.float32)
    iv = (((ax[2][None, :] - probe.apex_mm[2]) / depth[:, None] - v[0]) / dv).astype(np.float32)
    ii = np.broadcast_to(np.arange(D, dtype=np.float32)[:, None, None], (D, H, W))
    coords = np.stack([ii, np.broadcast_to(iu[:, :, None], (D, H, W)),
                       np.broadcast_to(iv[:, None, :], (D, H, W))])
    return ndimage.map_coordinates(cum, coords, order=1, mode="nearest", prefilter=False)


def saturate_db(att_db: np.ndarray, max_db: float) -> np.ndarray:
    """Soft ceiling ``max_db * (1 - exp(-att_db / max_db))`` of an attenuation (dB).

    Linear for small values, never above ``max_db``: real acoustic shadows are partly
    filled in (scattering around the bone, side lobes, spatial compounding), and a face
    behind a thick oblique stretch of skull should stay faintly visible. A modelling choice.
    """
    m = np.float32(max_db)
    out = np.exp(-att_db / m)
    np.subtract(np.float32(1.0), out, out=out)
    out *= m
    return out


def apply_psf(re: np.ndarray, im: np.ndarray, sigmas: Sequence[float]) -> np.ndarray:
    """Envelope ``|h * (re + i im)|`` with the separable Gaussian PSF ``h`` (unit DC gain),
    ``(D, H, W)`` float32."""
    fr = ndimage.gaussian_filter(re, sigmas, truncate=_TRUNCATE, mode="constant")
    fi = ndimage.gaussian_filter(im, sigmas, truncate=_TRUNCATE, mode="constant")
    np.multiply(fr, fr, out=fr)
    fr += fi * fi
    return np.sqrt(fr, out=fr)


def log_compress(env: np.ndarray, acq: Acquisition) -> np.ndarray:
    """``255 * clip((20 log10(env) + gain + DR) / DR, 0, 1) ** gamma`` as float32."""
    out = np.log10(np.maximum(env, np.float32(1e-9)))
    out *= np.float32(20.0 / acq.dynamic_range_db)
    out += np.float32((acq.gain_db + acq.dynamic_range_db) / acq.dynamic_range_db)
    np.clip(out, 0.0, 1.0, out=out)
    if acq.gamma != 1.0:
        np.power(out, np.float32(acq.gamma), out=out)
    out *= np.float32(255.0)
    return out


def simulate(maps: np.ndarray, axes_mm: Sequence[np.ndarray], probe: Probe, acq: Acquisition,
             rng: np.random.Generator) -> np.ndarray:
    """Tissue maps -> ``(D, H, W)`` uint8 ultrasound volume (0 outside the probe's sector,
    1-255 inside).

    Args:
        maps: ``(3, D, H, W)`` echogenicity, attenuation (dB/mm one way), reflectivity.
        axes_mm: world coordinates of the voxel centres along axes 0, 1, 2 (uniform spacing).
        probe: the sector (and apex for the rays).
        acq: imaging parameters.
        rng: source of the speckle and noise.
    """
    ax = [np.asarray(a, np.float64) for a in axes_mm]
    sp = float(ax[0][1] - ax[0][0])
    sigmas = psf_sigmas_vox(acq, sp)
    re, im = scatterer_field(maps, acq, sigmas, rng)
    att_db = ray_attenuation_db(maps[1], ax, probe)
    x = ax[0][:, None, None] - probe.apex_mm[0]
    y = ax[1][None, :, None] - probe.apex_mm[1]
    z = ax[2][None, None, :] - probe.apex_mm[2]
    r = np.sqrt(x * x + y * y + z * z).astype(np.float32)
    tgc_db = np.float32(acq.tgc_db_per_mm) * (r - np.float32(probe.near_mm))
    att_db = saturate_db(att_db, acq.shadow_max_db)
    amp = np.power(np.float32(10.0), (-2.0 * att_db) / np.float32(20.0))   # round trip
    re *= amp
    im *= amp
    ks = [_gauss_kernel(s, _TRUNCATE) for s in sigmas]
    noise = np.float32(10.0 ** (acq.noise_db / 20.0) / np.sqrt(2.0 * np.prod([(k ** 2).sum() for k in ks])))
    re += noise * rng.standard_normal(re.shape, dtype=np.float32)
    im += noise * rng.standard_normal(re.shape, dtype=np.float32)
    g = np.power(np.float32(10.0), tgc_db / np.float32(20.0))
    re *= g
    im *= g
    env = apply_psf(re, im, sigmas)
    img = log_compress(env, acq)
    np.maximum(img, np.float32(1.0), out=img)  # 0 is reserved for "outside the sector"
    img[~probe.mask(ax)] = 0.0
    return np.rint(img).astype(np.uint8)
