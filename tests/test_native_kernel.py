"""The C slice loop (``ops/native/fill_slices.c``, built by ``hatch_build.py``) against
the numba loop it replaces (an independent implementation of the same interpolation):
equal to float32 rounding on a smooth map, with shifts, CTFs, two channels and an
anisotropic magnification; projecting with it never imports numba."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

import cryoextract.ops.native as native
from cryoextract.ops.projection import fourier_volume, project_spectra
from cryoextract.ops.rotations import euler_to_matrix
from helpers import cli_env


def test_the_library_is_built_from_this_source() -> None:
    assert native.library_path().exists(), "make venv (pip install -e .) builds it"
    assert native.kernel_backend() == "c"
    assert native.library_path(native.NORMALISE_SOURCE).exists()
    assert native.normaliser() is not None


def _smooth_map(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    volume = np.zeros((n, n, n), np.float32)
    for z, y, x in rng.integers(n // 4, 3 * n // 4, (40, 3)):
        volume[z, y, x] += rng.uniform(0.5, 1.5)
    return ndimage.gaussian_filter(volume, 2.0)


@pytest.mark.parametrize("magnification", [None, [[1.01, 0.004], [-0.003, 0.995]]])
def test_c_and_numba_loops_agree(monkeypatch: pytest.MonkeyPatch, magnification) -> None:
    from cryoextract.ops.slice_kernel import fill_slices as numba_fill

    n, count = 48, 30
    rng = np.random.default_rng(1)
    fvol = fourier_volume(np.stack([_smooth_map(n, 2), _smooth_map(n, 3)]))  # 2 channels
    rotations = euler_to_matrix(*rng.uniform(-180, 180, (3, count)))
    shifts = rng.normal(0, 3, (count, 2))
    ctf = rng.uniform(-1, 1, (count, n, n // 2 + 1)).astype(np.float32)

    def both() -> tuple[np.ndarray, np.ndarray]:
        ours = project_spectra(fvol, rotations, shifts, ctf, magnification=magnification)
        with monkeypatch.context() as patch:
            patch.setattr(native, "slice_filler", lambda: numba_fill)
            reference = project_spectra(fvol, rotations, shifts, ctf,
                                        magnification=magnification)
        return ours, reference

    ours, reference = both()
    assert ours.shape == reference.shape == (2, count, n, n // 2 + 1)
    scale = np.abs(reference).max()
    assert scale > 0
    assert np.abs(ours - reference).max() <= 2e-6 * scale
    # a radius limit writes the same points (zeros elsewhere in both)
    limited = project_spectra(fvol, rotations, shifts, ctf, max_radius_px=10.0,
                              magnification=magnification)
    with monkeypatch.context() as patch:
        patch.setattr(native, "slice_filler", lambda: numba_fill)
        limited_ref = project_spectra(fvol, rotations, shifts, ctf, max_radius_px=10.0,
                                      magnification=magnification)
    np.testing.assert_array_equal(limited == 0, limited_ref == 0)
    assert np.abs(limited - limited_ref).max() <= 2e-6 * scale


def test_projecting_imports_no_numba_and_keeps_denormals() -> None:
    """Loading the library changes no process state: a library built with -ffast-math
    would turn on flush-to-zero for the whole process (denormals read as 0)."""
    code = ("import sys, numpy as np\n"
            "from cryoextract.ops.projection import fourier_volume, project_spectra\n"
            "fvol = fourier_volume(np.ones((8, 8, 8), np.float32))\n"
            "project_spectra(fvol, np.eye(3)[None])\n"
            "tiny = np.array([1e-40], np.float32)\n"
            "print('numba' in sys.modules, bool((tiny * np.float32(0.5))[0] > 0),\n"
            "      bool(np.float64(5e-324) / 2 == 0 and np.float64(5e-324) > 0))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=cli_env(), timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "True"]


def test_the_loop_refuses_arrays_it_cannot_trust() -> None:
    fill = native.slice_filler()
    points = np.zeros(4, np.int64)
    floats = np.zeros(4, np.float32)
    phases = np.ones((1, 4), np.complex64)
    args = (np.zeros(64, np.complex64), 1, 16, 4, np.float32(2), np.zeros((1, 2, 3),
            np.float32), points, points, points, floats, floats, phases, phases,
            np.ones((1, 16), np.float32))
    with pytest.raises(TypeError, match="out must be"):
        fill(*args, np.zeros((1, 1, 16), np.complex128))
    strided = np.zeros(128, np.complex64)[::2]  # never copied silently: refused
    with pytest.raises(TypeError, match="voxels must be"):
        fill(strided, *args[1:], np.zeros((1, 1, 16), np.complex64))
    with pytest.raises(TypeError, match="shapes"):
        fill(*args, np.zeros((2, 1, 16), np.complex64))


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as stream:
            for line in stream:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def test_every_instruction_set_build_gives_the_same_bits(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The installed library picks the best of its x86-64-v4 / v3 / baseline clones when
    it is loaded; each of them, built alone here, must give the installed library's
    projections bit for bit (ISO C: no FMA contraction, no reassociation), so a job's
    output does not depend on the CPU that ran it."""
    import shutil
    import sysconfig

    compiler = shutil.which("cc") or shutil.which(sysconfig.get_config_var("CC") or "gcc")
    assert compiler is not None, "make relion installs gcc"
    n, count = 40, 25
    rng = np.random.default_rng(7)
    fvol = fourier_volume(_smooth_map(n, 5))
    rotations = euler_to_matrix(*rng.uniform(-180, 180, (3, count)))
    shifts = rng.normal(0, 2, (count, 2))
    ctf = rng.uniform(-1, 1, (count, n, n // 2 + 1)).astype(np.float32)
    installed = project_spectra(fvol, rotations, shifts, ctf)
    assert np.abs(installed).max() > 0
    flags = _cpu_flags()
    builds = {"baseline": []}
    if {"avx2", "fma", "bmi2"} <= flags:
        builds["x86-64-v3"] = ["-march=x86-64-v3"]
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        builds["x86-64-v4"] = ["-march=x86-64-v4"]
    source = native.SOURCE
    for name, extra in builds.items():
        library = tmp_path / f"fill_{name}.so"
        subprocess.run([compiler, "-O3", "-fno-math-errno", "-fno-trapping-math", "-fPIC",
                        "-shared", "-std=c99", "-DCRYOEXTRACT_NO_CLONES", *extra, "-o",
                        str(library), str(source)], check=True, capture_output=True)
        with monkeypatch.context() as patch:
            patch.setattr(native, "library_path", lambda _source=source, path=library: path)
            native._library.cache_clear()
            native._c_filler.cache_clear()
            try:
                alone = project_spectra(fvol, rotations, shifts, ctf)
            finally:
                native._library.cache_clear()
                native._c_filler.cache_clear()
        assert alone.tobytes() == installed.tobytes(), name
