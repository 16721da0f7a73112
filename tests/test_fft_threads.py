"""``cryoextract.ops.fft_threads``: the same transforms as scipy.fft, and no thread left
behind (scipy.fft's own ``workers > 1`` leaves a pocketfft pool whose fork handlers hung
a ``fork()`` in CI; see the module docstring)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.fft

from cryoextract.ops import fft_threads


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_same_results_as_scipy(workers, monkeypatch):
    monkeypatch.setattr(fft_threads, "MIN_VALUES_PER_THREAD", 1)  # split even small arrays
    rng = np.random.default_rng(0)
    images = rng.normal(size=(5, 24, 30)).astype(np.float32)
    np.testing.assert_allclose(fft_threads.rfft2(images, workers=workers),
                               scipy.fft.rfft2(images), rtol=1e-6, atol=1e-4)
    for axis in (0, 1, -1):
        np.testing.assert_allclose(fft_threads.rfft(images, axis=axis, workers=workers),
                                   scipy.fft.rfft(images, axis=axis), rtol=1e-6, atol=1e-4)
        spectra = images.astype(np.complex64)
        np.testing.assert_allclose(fft_threads.fft(spectra, axis=axis, workers=workers),
                                   scipy.fft.fft(spectra, axis=axis), rtol=1e-6, atol=1e-4)
    spectra = scipy.fft.rfft2(images)
    np.testing.assert_allclose(fft_threads.irfft2(spectra, s=(24, 30), workers=workers),
                               images, atol=1e-5)
    single = images[0]  # one image: cut along the axis that is not transformed
    np.testing.assert_allclose(fft_threads.rfft(single, axis=-1, workers=workers),
                               scipy.fft.rfft(single, axis=-1), rtol=1e-6, atol=1e-4)


def test_no_thread_outlives_a_transform():
    """After the threaded map transform, Fourier crop and subtraction FFTs, the process has
    as many threads as before (scipy.fft's workers=2 leaves its pool: checked first)."""
    script = textwrap.dedent("""
        import os
        import time
        import numpy as np
        import scipy.fft
        from cryoextract.ops.fourier import fourier_crop_many
        from cryoextract.ops.projection import fourier_volume
        from cryoextract.ops.subtract import subtract_images

        def threads():
            return len(os.listdir("/proc/self/task"))

        def settled(count):  # a joined thread may take a moment to leave /proc
            deadline = time.monotonic() + 20
            while threads() > count and time.monotonic() < deadline:
                time.sleep(0.05)
            return threads()

        rng = np.random.default_rng(0)
        before = threads()
        fourier_volume(rng.normal(size=(48, 48, 48)).astype(np.float32), workers=2)
        images = rng.normal(size=(64, 96, 96)).astype(np.float32)
        fourier_crop_many(images, (48,), workers=2)
        spectra = scipy.fft.rfft2(images).astype(np.complex64)
        subtract_images(images, spectra * 0.5, fit=False, workers=2)
        after = settled(before)
        scipy.fft.fft(images, workers=2)
        print(before, after, threads())
    """)
    # BLAS thread pools (started with numpy, or on a first large call) stay out of the count
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    before, after, with_pool = map(int, proc.stdout.split())
    assert with_pool > before  # the pool that our code must not start
    assert after == before


def test_pocketfft_alone_gives_scipy_fft_bit_for_bit_without_importing_it():
    """In a fresh process the transforms load scipy's pocketfft module on its own (not
    ``import scipy.fft``, 0.1 s); every result is scipy.fft's to the bit, and a later
    ``import scipy.fft`` works on the very same module."""
    code = textwrap.dedent("""
        import sys
        import numpy as np
        from cryoextract.ops import fft_threads as f
        rng = np.random.default_rng(3)
        images = rng.standard_normal((6, 20, 24)).astype(np.float32)
        spectra = f.rfft2(images)
        results = {
            "rfft2": spectra, "irfft2": f.irfft2(spectra, s=(20, 24)),
            "rfft0": f.rfft(images, axis=0), "fft1": f.fft(spectra, axis=1),
            "fft0": f.fft(spectra.copy(), axis=0, overwrite_x=True),
            "rfft2_64": f.rfft2(images.astype(np.float64)),
        }
        print("scipy.fft" in sys.modules, f._pocketfft() is not None)
        # what pocketfft is not handed as such goes through scipy.fft itself
        results["irfft2_odd"] = f.irfft2(spectra, s=(20, 23))
        results["rfft2_int"] = f.rfft2(np.arange(48).reshape(6, 8))
        import scipy.fft as sf
        from scipy.fft._pocketfft import pypocketfft
        print(pypocketfft is f._pocketfft())
        expected = {
            "rfft2": sf.rfft2(images), "irfft2": sf.irfft2(spectra, s=(20, 24)),
            "irfft2_odd": sf.irfft2(spectra, s=(20, 23)), "rfft0": sf.rfft(images, axis=0),
            "fft1": sf.fft(spectra, axis=1), "fft0": sf.fft(spectra, axis=0),
            "rfft2_64": sf.rfft2(images.astype(np.float64)),
            "rfft2_int": sf.rfft2(np.arange(48).reshape(6, 8)),
        }
        print(all(results[k].dtype == v.dtype and results[k].tobytes() == v.tobytes()
                  for k, v in expected.items()))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "True", "True"]


def test_a_changed_private_module_falls_back_to_scipy_fft(monkeypatch):
    class Changed:  # a scipy whose pypocketfft takes other arguments
        def r2c(self, *args):
            raise TypeError("r2c(): incompatible function arguments")

    monkeypatch.delitem(sys.modules, fft_threads._POCKETFFT, raising=False)
    monkeypatch.delitem(sys.modules, "scipy.fft")
    monkeypatch.setattr(fft_threads, "_load_pocketfft", lambda: Changed())
    fft_threads._pocketfft_once.cache_clear()
    try:
        assert fft_threads._pocketfft() is None
    finally:
        fft_threads._pocketfft_once.cache_clear()
    monkeypatch.undo()
    images = np.random.default_rng(0).standard_normal((3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(fft_threads.rfft2(images), scipy.fft.rfft2(images))


def test_an_axis_out_of_range_is_refused_as_scipy_fft_does():
    x = np.ones((4, 8), np.float32)
    with pytest.raises((IndexError, ValueError)):
        fft_threads.rfft(x, axis=2)
    with pytest.raises((IndexError, ValueError)):
        fft_threads.fft(x.astype(np.complex64), axis=-3)
