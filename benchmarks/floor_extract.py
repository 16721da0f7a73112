"""The naive floor of particle extraction, for ``extract_vs_relion.py`` to compare with.

Only what any extraction must do, written the plain way: read each micrograph whole
(mrcfile), cut its boxes with slices, Fourier-crop them with one batched ``rfft2`` and
``irfft2`` (scipy.fft, float32), and write one MRC stack per micrograph (mrcfile), on
``--processes`` processes (one micrograph per task). No normalisation, no metadata, no
checks, no STAR file. Picks are RELION coordinate STAR files, boxed around the floor of
each coordinate, as ``cryoextract extract`` does; boxes leaving the micrograph are
skipped (the benchmark draws none).

    python benchmarks/floor_extract.py micrographs.star Picks _pick.star \
        --box 256 --bin-to 128 --out Floor [--processes 2]
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import mrcfile
import numpy as np
import scipy.fft
import starfile


def extract_one(job: tuple[str, str, int, int, str]) -> int:
    micrograph, picks, box, out_box, out = job
    with mrcfile.open(micrograph, permissive=True) as mrc:
        image = np.asarray(mrc.data)
    table = starfile.read(picks, always_dict=True)
    table = next(iter(table.values()))
    x = np.floor(table["rlnCoordinateX"].to_numpy()).astype(int) - box // 2
    y = np.floor(table["rlnCoordinateY"].to_numpy()).astype(int) - box // 2
    ny, nx = image.shape
    inside = (x >= 0) & (y >= 0) & (x + box <= nx) & (y + box <= ny)
    boxes = np.stack([image[b : b + box, a : a + box] for a, b in
                      zip(x[inside], y[inside], strict=True)]).astype(np.float32)
    spectrum = scipy.fft.rfft2(boxes)
    half = out_box // 2
    cropped = np.concatenate([spectrum[:, : half + 1, : half + 1],
                              spectrum[:, box - half + 1 :, : half + 1]], axis=1)
    particles = scipy.fft.irfft2(cropped, s=(out_box, out_box)).astype(np.float32)
    particles *= (out_box / box) ** 2
    mrcfile.write(out, particles, overwrite=True)
    return len(particles)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("micrographs", help="RELION micrographs STAR")
    parser.add_argument("coords_dir")
    parser.add_argument("coords_suffix")
    parser.add_argument("--box", type=int, required=True)
    parser.add_argument("--bin-to", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    blocks = starfile.read(args.micrographs, always_dict=True)
    names = blocks["micrographs"]["rlnMicrographName"]
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for name in names:
        stem = Path(name).stem
        picks = Path(args.coords_dir) / Path(name).parent / f"{stem}{args.coords_suffix}"
        jobs.append((name, str(picks), args.box, args.bin_to,
                     str(args.out / f"{stem}.mrcs")))
    with ProcessPoolExecutor(args.processes) as pool:
        total = sum(pool.map(extract_one, jobs))
    print(f"{total} particles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
