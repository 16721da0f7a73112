"""The real particle stacks of ``../shared/data`` staged for the ``restack`` and
``downsample`` tests (``test_restack.py``, ``test_downsample.py``), and the oracles read
here: images read with mrcfile, a naive ``np.fft`` Fourier crop.

Note: every real stack in ``../shared/data/real`` is MRC mode 2 (float32; the README's
float16 RELION 5 Extract job is not in the copy), so the float16 cases use mode-12
copies of the same real images, made here with mrcfile.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import starfile

from shared_data import REAL, require_paths

# name -> (particles STAR, the stack its rlnImageName points at), under REAL
DATASETS = {
    "relion31": ("cryodrgn_4.3.1_sdist/relion31.star", "cryodrgn_4.3.1_sdist/relion31.mrcs"),
    "sta_bin8_relion30": (
        "cryodrgn_4.3.1_sdist/sta_testing_bin8.star",
        "cryodrgn_4.3.1_sdist/ay19102021_L3_position6_ribo_it09_bin8_1.82A.mrcs",
    ),
    "trpv1": ("cryojax_trpv1/trpv1_small_stack.star", "cryojax_trpv1/trpv1_small_stack.mrcs"),
    "aspire": (
        "aspire_python/tests/saved_test_data/sample_particles_relion31.star",
        "aspire_python/tests/saved_test_data/sample.mrcs",
    ),
    "empiar10076_relion30": (
        "cryodrgn_4.3.1_sdist/empiar_10076_7.star", "cryodrgn_4.3.1_sdist/empiar_10076_7.mrc",
    ),
}


def stage(name: str, root: Path, *, float16: bool = False) -> Path:
    """Copy a dataset into ``root/name``: its STAR, and its stack where the STAR says."""
    star_rel, stack_rel = DATASETS[name]
    require_paths(REAL / star_rel, REAL / stack_rel)
    folder = root / name
    folder.mkdir(parents=True)
    star = folder / Path(star_rel).name
    shutil.copy(REAL / star_rel, star)
    names = star_block(star)["rlnImageName"].astype(str)
    for path in {n.split("@")[-1].strip() for n in names}:
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if float16:
            with mrcfile.new(target, overwrite=True) as handle:
                handle.set_data(read_stack(REAL / stack_rel).astype(np.float16))
        else:
            shutil.copy(REAL / stack_rel, target)
    return star


def star_block(star: Path) -> pd.DataFrame:
    blocks = starfile.read(star, always_dict=True)
    return blocks.get("particles", next(iter(blocks.values())))


def read_stack(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.mmap(path, permissive=True) as handle:
            data = np.array(handle.data)
    return data if data.ndim == 3 else data[None]


def mrc_mode(path: Path) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.open(path, permissive=True, header_only=True) as handle:
            return int(handle.header.mode)


def staged_images(folder: Path, names) -> np.ndarray:
    """The images named ``NNNNNN@path`` (paths relative to ``folder``), read here."""
    cache: dict[str, np.ndarray] = {}
    out = []
    for name in names:
        number, path = str(name).split("@") if "@" in str(name) else ("1", str(name))
        path = path.strip()
        if path not in cache:
            cache[path] = read_stack(folder / path)
        out.append(cache[path][int(number) - 1])
    return np.stack(out)


def bits_of(images: np.ndarray) -> np.ndarray:
    return images.view(np.uint16 if images.dtype == np.float16 else np.uint32)


def naive_crop(image: np.ndarray, m: int) -> np.ndarray:
    """Oracle: rfft2, keep rows 0..m/2 and n-m/2+1..n-1 and columns 0..m/2, scale (m/n)^2."""
    n = image.shape[-1]
    spectrum = np.fft.rfft2(np.asarray(image, dtype=np.float64))
    kept = np.concatenate([spectrum[: m // 2 + 1, : m // 2 + 1],
                           spectrum[n - m // 2 + 1 :, : m // 2 + 1]])
    return np.fft.irfft2(kept, s=(m, m)) * (m / n) ** 2


def out_tables(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    blocks = starfile.read(out / "particles.star", always_dict=True)
    return blocks["optics"], blocks["particles"]
