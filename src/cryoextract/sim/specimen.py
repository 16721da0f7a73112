"""The simulated specimen: one random globular object, its orientations, its projections.

The object is a few broad Gaussian "domains" plus many narrow Gaussian "atom clusters",
about ``particle_diameter_angstrom`` wide; each particle is its projection in a uniformly
random 3D orientation, rendered at a sub-pixel position (:mod:`.micrograph` places the
particles and forms the image).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_N_DOMAINS = 14
_N_FINE = 48
_MIN_EXPONENT = -40.0


@dataclass(frozen=True)
class GaussianObject:
    """A 3D object as a sum of isotropic Gaussians; arrays (k, 3), (k,), (k,), in Å."""

    centres_angstrom: np.ndarray
    sigmas_angstrom: np.ndarray
    weights: np.ndarray

    @property
    def radius_angstrom(self) -> float:
        """Radius beyond which every Gaussian has fallen below exp(-8) of its peak."""
        norms = np.linalg.norm(self.centres_angstrom, axis=1)
        return float(np.max(norms + 4.0 * self.sigmas_angstrom))


def random_object(
    rng: np.random.Generator, diameter_angstrom: float, pixel_size_angstrom: float
) -> GaussianObject:
    """A globular random object about ``diameter_angstrom`` wide."""

    def in_ball(n: int, radius: float) -> np.ndarray:
        direction = rng.normal(size=(n, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        return direction * (radius * rng.uniform(size=(n, 1)) ** (1.0 / 3.0))

    fine_min = max(2.5, 0.8 * pixel_size_angstrom)
    centres = np.concatenate(
        [in_ball(_N_DOMAINS, 0.27 * diameter_angstrom), in_ball(_N_FINE, 0.36 * diameter_angstrom)]
    )
    sigmas = np.concatenate(
        [
            rng.uniform(0.06, 0.11, _N_DOMAINS) * diameter_angstrom,
            rng.uniform(fine_min, max(5.0, 2.0 * fine_min), _N_FINE),
        ]
    )
    weights = np.concatenate([rng.uniform(0.6, 1.0, _N_DOMAINS), rng.uniform(0.3, 0.6, _N_FINE)])
    return GaussianObject(centres - centres.mean(axis=0), sigmas, weights)


def random_rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    """Uniformly distributed rotation matrices, shape (n, 3, 3)."""
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=1,
    )


def render_particle(
    canvas: np.ndarray,
    obj: GaussianObject,
    rotation: np.ndarray,
    centre_yx: tuple[float, float],
    pixel_size_angstrom: float,
) -> None:
    """Add the projection of ``obj`` rotated by ``rotation`` (3, 3) at a sub-pixel centre."""
    rotated = obj.centres_angstrom @ rotation.T / pixel_size_angstrom  # (k, 3) in px
    sigmas = obj.sigmas_angstrom / pixel_size_angstrom
    amplitudes = obj.weights * sigmas  # peak of the projected Gaussian ∝ σ
    half = int(np.ceil(obj.radius_angstrom / pixel_size_angstrom)) + 1
    y0 = int(np.floor(centre_yx[0])) - half
    x0 = int(np.floor(centre_yx[1])) - half
    rows = slice(max(y0, 0), min(y0 + 2 * half + 1, canvas.shape[0]))
    cols = slice(max(x0, 0), min(x0 + 2 * half + 1, canvas.shape[1]))
    if rows.start >= rows.stop or cols.start >= cols.stop:
        return
    inv_two_var = 1.0 / (2.0 * sigmas[:, None] ** 2)
    dy = np.arange(rows.start, rows.stop)[None, :] - (centre_yx[0] + rotated[:, 1:2])
    dx = np.arange(cols.start, cols.stop)[None, :] - (centre_yx[1] + rotated[:, 0:1])
    # Clipping the exponent keeps subnormal numbers (very slow in exp and BLAS) out.
    gy = np.exp(np.maximum(-(dy * dy) * inv_two_var, _MIN_EXPONENT)) * amplitudes[:, None]
    gx = np.exp(np.maximum(-(dx * dx) * inv_two_var, _MIN_EXPONENT))
    # einsum's own loop, not BLAS: a threaded gemm stalls on small matrices on busy machines.
    canvas[rows, cols] += np.einsum("ky,kx->yx", gy, gx)
