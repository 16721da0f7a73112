"""RELION 3.1 as a test oracle for particle extraction.

Findings from probing RELION 3.1.3 (Debian ``relion_preprocess``, ``relion_stack_create``,
``relion_image_handler``) with synthetic data; they are what the helpers below rely on.

(a) Command line and paths. Run from the project directory (cwd); every path in the
    micrographs STAR, ``--coord_dir``, ``--part_dir`` and ``--part_star`` is relative to it::

        relion_preprocess --i micrographs.star --coord_dir Picks/ --coord_suffix _pick.star \\
            --part_star Relion/particles.star --part_dir Relion/ --extract --extract_size 64 \\
            [--scale 32] [--norm --bg_radius 12 [--no_ramp]] [--invert_contrast] \\
            [--white_dust 2 --black_dust 2]

    The micrographs STAR is RELION 3.1 form (``data_optics`` with rlnOpticsGroupName,
    rlnOpticsGroup, rlnMicrographPixelSize, rlnVoltage, rlnSphericalAberration,
    rlnAmplitudeContrast; ``data_micrographs`` with rlnMicrographName, rlnOpticsGroup).
    Mapping (``decomposePipelineFileName``): if some directory component *after the first
    one* starts with ``job`` + 3 digits, everything up to and including that component is
    removed, otherwise the name is kept whole; call the rest POST. Coordinates are read from
    ``coord_dir + POST.withoutExtension() + coord_suffix`` and the stack is written to
    ``part_dir + POST.withoutExtension() + ".mrcs"`` (next to a ``*_extract.star``). Examples:
    ``MotionCorr/job002/Micrographs/mic_001.mrc`` -> ``Picks/Micrographs/mic_001_pick.star``
    and ``Relion/Micrographs/mic_001.mrcs``; ``Micrographs/mic_001.mrc`` -> the same two
    paths; ``data/raw/m1.mrc`` -> ``Picks/data/raw/m1_pick.star``;
    ``A/job01/m4.mrc`` (2 digits) -> nothing removed. A trailing ``/`` is added to
    ``--coord_dir`` and ``--part_dir`` when missing. Without ``--coord_dir`` 3.1.3 looks
    for the literal prefix ``ASINPUT`` (a bug), so always pass it. A missing coordinate
    file is a warning and that micrograph is skipped (rc 0). ``rlnImageName`` is
    ``%06d@<part_dir><POST stem>.mrcs``, 1-based, counted per micrograph, in pick order.
(b) Box convention: ``xpos = (long)x`` (truncation), box columns ``xpos-N/2 .. xpos+N/2-1``
    (same for y). A delta at (x=30, y=20), pick (30.9, 20.9), box 16: the delta is at
    ``[8, 8]`` (row 8, column 8) of the (16, 16) image. No sub-pixel shift, and the output
    STAR keeps the pick's original coordinates (30.9, 20.9) with no rlnOrigin* columns.
(c) Edges: a box partly outside is filled by nearest row/column replication (``np.clip`` of
    the row and column indices), verified exactly on a gradient image for picks 2-3 px
    from every edge and corners. A box fully outside (e.g. x = -8 with box 16:
    ``xF = xpos + N/2 - 1 < 0``) aborts the whole run with rc 1 and
    "particle<k> lies completely outside micrograph"; stacks already written (earlier
    micrographs, earlier particles of this one) stay on disk, no part_star is written.
    x = -7 (one column inside) extracts. A pick whose *centre* is outside but whose box
    overlaps the micrograph (e.g. x = -5, box 64) is extracted with replication.
(d) uint16 (MRC mode 6): RELION 3.1 reads it as *signed* int16: values < 32768 are exact,
    32768 -> -32768, 40000 -> -25536, 65535 -> -1. Output stacks are always float32 (mode 2,
    voxel size = output pixel size). A micrograph with a single particle gives an MRC with
    nz = 1 (mrcfile reads it as 2-D), hence :func:`read_stack` reshapes.
(e) Output STAR: ``data_optics``: rlnOpticsGroupName, rlnOpticsGroup, rlnVoltage,
    rlnSphericalAberration, rlnAmplitudeContrast, rlnImagePixelSize (= mic pixel size
    * extract_size / scale), rlnImageSize (= scale or extract_size), rlnImageDimensionality
    (2). ``data_particles``: all pick columns in input order (rlnCoordinateX/Y as given,
    rlnAutopickFigureOfMerit, rlnClassNumber ... carried), then rlnImageName,
    rlnMicrographName (verbatim from the input STAR), rlnOpticsGroup; with CTF columns in
    the micrographs STAR, the CTF parameters are added too. Order of operations per box:
    window -> Fourier rescale (``--scale``) -> normalise (dust removal with background
    mean/std, then ramp (plane fit on pixels with i*i+j*j > r*r, Xmipp-centred indices)
    or mean subtraction, then divide by the background std) -> invert. Dust removal only
    happens with ``--norm``; replacements are Gaussian draws from a fixed-seed generator
    (runs are reproducible).
(f) ``relion_stack_create --i particles.star --o /abs/root`` reads a STAR written by Python's
    ``starfile`` (``data_optics`` + ``data_particles``) and stacks written by mrcfile
    (``set_image_stack()``), with rlnImageName resolved relative to the cwd (run it with
    cwd = the output directory when names are relative to it). It writes ``root.mrcs``
    (float32, images in STAR order, pixel-identical to the input) and ``root.star`` (same
    tables, rlnImageName rewritten to ``%06d@/abs/root.mrcs``); origins are not applied
    unless ``--apply_transformation``. ``relion_image_handler --i in.mrcs --o out.mrcs``
    also round-trips a stack exactly. RELION 3.1 refuses MRC mode 12 (float16):
    "RELION 3.1 does not support half-precision floating point numbers".
    Files without rlnOpticsGroup in data_particles are accepted too.
(g) Origin sign (checked with ``--reextract_data_star p.star --recenter``): a particle with
    rlnCoordinateX 30, rlnOriginXAngst -1.35 (= -0.9 px at 1.5 A/px) is re-extracted at
    x = 31 with origin +0.15 A, i.e. RELION keeps ``coord - origin_A / mic_apix`` (= 30.9)
    invariant: the particle lies at ``rlnCoordinateX - rlnOriginXAngst / mic_pixel_size``.
    A pick at 30.9 boxed at 30 therefore has rlnOriginXAngst = -0.9 * mic_pixel_size.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import starfile
from scipy import ndimage

from prereq import require_programs

RELION_TOOLS = ("relion_preprocess", "relion_stack_create", "relion_image_handler")

#: where the package's sources live (used to run ``python -m cryoextract`` uninstalled)
SRC_DIR = Path(__file__).resolve().parents[1] / "src"


# --------------------------------------------------------------------------- availability
def have_relion(*tools: str) -> bool:
    """True when every named RELION program is on PATH."""
    return all(shutil.which(t) is not None for t in (tools or ("relion_preprocess",)))


def require_relion(*tools: str) -> None:
    """Fail the test when RELION is not installed (``prereq.require``).

    With no argument only ``relion_preprocess`` is required.
    """
    require_programs(*(tools or ("relion_preprocess",)))


# --------------------------------------------------------------------------- dataset
@dataclass
class Micrograph:
    name: str  # path relative to the dataset root, as in the STAR file
    kind: str  # "float32" or "uint16"
    shape: tuple[int, int]  # (ny, nx)
    picks: pd.DataFrame  # the coordinate table as written

    @property
    def stem(self) -> str:
        return Path(self.name).stem


@dataclass
class Dataset:
    root: Path
    micrographs_star: str  # relative to root
    coords_dir: str  # relative to root, ends with "/"
    coords_suffix: str
    apix: float
    micrographs: list[Micrograph] = field(default_factory=list)
    voltage: float = 300.0
    cs: float = 2.7
    amp_contrast: float = 0.1

    def mic(self, stem: str) -> Micrograph:
        return next(m for m in self.micrographs if m.stem == stem)

    @property
    def n_picks(self) -> int:
        return sum(len(m.picks) for m in self.micrographs)


def relion_post_name(mic_name: str) -> str:
    """RELION 3.1 ``decomposePipelineFileName``: the part after a ``jobNNN/`` component."""
    parts = mic_name.split("/")
    for k in range(1, len(parts) - 1):
        if re.match(r"job\d{3}", parts[k]):
            return "/".join(parts[k + 1 :])
    return mic_name


def coordinate_file(ds: Dataset, mic_name: str) -> Path:
    """The coordinate file RELION reads for ``mic_name`` (absolute path)."""
    post = relion_post_name(mic_name)
    return ds.root / (ds.coords_dir + str(Path(post).with_suffix("")) + ds.coords_suffix)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    f = ndimage.gaussian_filter(rng.normal(size=shape), sigma, mode="wrap")
    return f / f.std()


def _micrograph_pixels(
    rng: np.random.Generator, shape: tuple[int, int], kind: str, picks: pd.DataFrame, dust: int
) -> np.ndarray:
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    structure = 2.0 * _smooth_field(rng, shape, 8.0) + 0.01 * (xx - nx / 2) - 0.006 * (yy - ny / 2)
    # blob-like "particles" at the picks so the boxes are not pure noise
    blobs = np.zeros(shape)
    for x, y in zip(picks["rlnCoordinateX"], picks["rlnCoordinateY"], strict=True):
        blobs += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 6.0**2))
    if kind == "float32":
        img = 10.0 + structure - 3.0 * blobs + rng.normal(size=shape)
        if dust:
            idx = rng.choice(ny * nx, size=2 * dust, replace=False)
            img.flat[idx[:dust]] += 25.0  # hot pixels
            img.flat[idx[dust:]] -= 25.0  # cold pixels
        return img.astype(np.float32)
    if kind == "uint16":
        lam = np.clip(300.0 + 40.0 * structure - 120.0 * blobs, 20.0, None)
        counts = rng.poisson(lam)
        assert counts.max() < 32768  # RELION 3.1 reads mode 6 as signed int16
        return counts.astype(np.uint16)
    raise ValueError(kind)


def _make_picks(
    rng: np.random.Generator, shape: tuple[int, int], n: int, box: int, n_edge: int
) -> pd.DataFrame:
    """``n`` picks: ``n_edge`` with centres 2-10 px from an edge, the rest with the whole box
    inside; about half with fractional coordinates; unique truncated positions."""
    ny, nx = shape
    half = box // 2
    taken: set[tuple[int, int]] = set()
    xs: list[float] = []
    ys: list[float] = []

    def edge_coord(size: int) -> float:
        d = int(rng.integers(2, 11))
        return float(d if rng.random() < 0.5 else size - 1 - d)

    while len(xs) < n:
        k = len(xs)
        if k < n_edge:
            # alternate x-edge, y-edge, corner
            mode = k % 3
            x = edge_coord(nx) if mode in (0, 2) else float(rng.integers(half, nx - half))
            y = edge_coord(ny) if mode in (1, 2) else float(rng.integers(half, ny - half))
        else:
            x = float(rng.integers(half + 1, nx - half - 1))
            y = float(rng.integers(half + 1, ny - half - 1))
        if k % 2 == 1:  # fractional part in [0.1, 0.9]: no truncation ambiguity in text
            x += round(float(rng.uniform(0.1, 0.9)), 3)
            y += round(float(rng.uniform(0.1, 0.9)), 3)
        key = (int(x), int(y))
        if key in taken:
            continue
        taken.add(key)
        xs.append(x)
        ys.append(y)
    return pd.DataFrame(
        {
            "rlnCoordinateX": xs,
            "rlnCoordinateY": ys,
            "rlnAutopickFigureOfMerit": np.round(rng.uniform(0.0, 5.0, n), 4),
            "rlnClassNumber": rng.integers(1, 4, n),
        }
    )


def make_dataset(
    root: Path,
    *,
    kinds: Sequence[str] = ("float32", "float32", "uint16"),
    shape: tuple[int, int] = (256, 256),
    n_picks: int = 20,
    n_edge: int = 8,
    box: int = 64,
    apix: float = 1.25,
    dust: int = 12,
    outside_pick: bool = False,
    mic_dir: str = "MotionCorr/job002/Micrographs",
    coords_dir: str = "Picks/",
    coords_suffix: str = "_pick.star",
    seed: int = 0,
) -> Dataset:
    """Write micrographs, a RELION 3.1 micrographs STAR and coordinate STAR files in ``root``.

    Micrograph ``k`` is ``<mic_dir>/mic_00k.mrc``; its picks are in
    ``<coords_dir><post>/mic_00k<coords_suffix>`` where ``post`` is RELION's mapping
    (``Picks/Micrographs/mic_001_pick.star`` for the defaults). ``outside_pick`` appends a
    pick at (-100, 60) to the first micrograph (box fully outside).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    ds = Dataset(
        root=root,
        micrographs_star="micrographs.star",
        coords_dir=coords_dir if coords_dir.endswith("/") else coords_dir + "/",
        coords_suffix=coords_suffix,
        apix=apix,
    )
    for k, kind in enumerate(kinds, start=1):
        name = f"{mic_dir}/mic_{k:03d}.mrc"
        picks = _make_picks(rng, shape, n_picks, box, n_edge)
        pixels = _micrograph_pixels(rng, shape, kind, picks, dust if kind == "float32" else 0)
        if outside_pick and k == 1:
            extra = pd.DataFrame(
                {
                    "rlnCoordinateX": [-100.0],
                    "rlnCoordinateY": [60.0],
                    "rlnAutopickFigureOfMerit": [1.0],
                    "rlnClassNumber": [1],
                }
            )
            picks = pd.concat([picks.iloc[:5], extra, picks.iloc[5:]], ignore_index=True)
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with mrcfile.new(path, overwrite=True) as m:
            m.set_data(pixels)
            m.voxel_size = apix
        ds.micrographs.append(Micrograph(name=name, kind=kind, shape=shape, picks=picks))
        cpath = coordinate_file(ds, name)
        cpath.parent.mkdir(parents=True, exist_ok=True)
        starfile.write(picks, cpath, overwrite=True)

    optics = pd.DataFrame(
        {
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnOpticsGroup": [1],
            "rlnMicrographPixelSize": [apix],
            "rlnVoltage": [ds.voltage],
            "rlnSphericalAberration": [ds.cs],
            "rlnAmplitudeContrast": [ds.amp_contrast],
        }
    )
    mics = pd.DataFrame(
        {
            "rlnMicrographName": [m.name for m in ds.micrographs],
            "rlnOpticsGroup": [1] * len(ds.micrographs),
        }
    )
    starfile.write(
        {"optics": optics, "micrographs": mics}, root / ds.micrographs_star, overwrite=True
    )
    return ds


# --------------------------------------------------------------------------- reading
def read_stack(path: Path) -> np.ndarray:
    """An MRC stack as float32 (n, ny, nx); a single 2-D image gives n = 1."""
    with mrcfile.open(path, permissive=True) as m:
        data = np.asarray(m.data, dtype=np.float32)
    if data.ndim == 2:
        data = data[None]
    return data


def parse_image_name(name: str) -> tuple[int, str]:
    """``"000012@Dir/stack.mrcs"`` -> (11, "Dir/stack.mrcs"): 0-based index and path."""
    m = re.fullmatch(r"\s*(\d+)@(.+?)\s*", name)
    if not m:
        raise ValueError(f"not a stack image name: {name!r}")
    return int(m.group(1)) - 1, m.group(2)


@dataclass
class Particles:
    optics: pd.DataFrame
    particles: pd.DataFrame
    images: np.ndarray  # (n, box, box), in particles-table order


def read_particles_star(star: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    blocks = starfile.read(star, always_dict=True)
    if "particles" not in blocks or "optics" not in blocks:
        raise AssertionError(f"{star}: expected data_optics and data_particles, got {list(blocks)}")
    return blocks["optics"], blocks["particles"].reset_index(drop=True)


def load_particles(star: Path, base_dir: Path) -> Particles:
    """Read a RELION 3.1 particles STAR and its images, rlnImageName relative to ``base_dir``."""
    optics, parts = read_particles_star(star)
    cache: dict[str, np.ndarray] = {}
    images = []
    for name in parts["rlnImageName"]:
        idx, path = parse_image_name(str(name))
        if path not in cache:
            cache[path] = read_stack(Path(base_dir) / path)
        images.append(cache[path][idx])
    arr = np.stack(images) if images else np.zeros((0, 0, 0), np.float32)
    return Particles(optics=optics, particles=parts, images=arr)


def particle_keys(parts: pd.DataFrame) -> list[tuple[str, int, int]]:
    """(micrograph name, truncated x, truncated y): how particles are matched across tools."""
    return [
        (str(m), math.trunc(float(x)), math.trunc(float(y)))
        for m, x, y in zip(
            parts["rlnMicrographName"],
            parts["rlnCoordinateX"],
            parts["rlnCoordinateY"],
            strict=True,
        )
    ]


def match_particles(ref: pd.DataFrame, test: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (ref_idx, test_idx) of the particles common to both, matched by key.

    Raises AssertionError when a key is duplicated or when the key sets differ.
    """
    rk = particle_keys(ref)
    tk = particle_keys(test)
    assert len(set(rk)) == len(rk), "duplicate particle keys in the reference"
    assert len(set(tk)) == len(tk), "duplicate particle keys in the tested output"
    missing = sorted(set(rk) - set(tk))
    extra = sorted(set(tk) - set(rk))
    assert not missing and not extra, (
        f"particle sets differ: {len(missing)} missing (e.g. {missing[:3]}), "
        f"{len(extra)} extra (e.g. {extra[:3]})"
    )
    tpos = {k: i for i, k in enumerate(tk)}
    ref_idx = np.arange(len(rk))
    test_idx = np.array([tpos[k] for k in rk], dtype=int)
    return ref_idx, test_idx


# --------------------------------------------------------------------------- running RELION
class RelionError(RuntimeError):
    pass


def run_relion_preprocess(
    ds: Dataset,
    part_dir: str,
    *,
    box: int,
    scale: int | None = None,
    norm: bool = False,
    bg_radius: int | None = None,
    ramp: bool = True,
    invert: bool = False,
    white_dust: float | None = None,
    black_dust: float | None = None,
    check: bool = True,
    timeout: float = 120.0,
    extra: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Run ``relion_preprocess --extract`` in ``ds.root``; outputs go to ``part_dir`` (relative
    to the root) with the particles STAR at ``<part_dir>/particles.star``. ``extra``: more
    arguments (``--helix ...``).

    With ``check`` a nonzero return code raises :class:`RelionError` with RELION's output.
    """
    part_dir = part_dir if part_dir.endswith("/") else part_dir + "/"
    cmd = [
        "relion_preprocess",
        "--i", ds.micrographs_star,
        "--coord_dir", ds.coords_dir,
        "--coord_suffix", ds.coords_suffix,
        "--part_star", part_dir + "particles.star",
        "--part_dir", part_dir,
        "--extract",
        "--extract_size", str(box),
    ]  # fmt: skip
    if scale is not None:
        cmd += ["--scale", str(scale)]
    if norm:
        if bg_radius is None:
            raise ValueError("RELION needs --bg_radius with --norm")
        cmd += ["--norm", "--bg_radius", str(int(bg_radius))]
        if not ramp:
            cmd.append("--no_ramp")
    if invert:
        cmd.append("--invert_contrast")
    if white_dust is not None:
        cmd += ["--white_dust", str(white_dust)]
    if black_dust is not None:
        cmd += ["--black_dust", str(black_dust)]
    cmd += list(extra)
    proc = subprocess.run(
        cmd, cwd=ds.root, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise RelionError(
            f"{' '.join(cmd)} failed with rc {proc.returncode} in {ds.root}\n"
            f"--- stderr ---\n{proc.stderr[-4000:]}\n--- stdout ---\n{proc.stdout[-2000:]}"
        )
    return proc


def relion_extract(ds: Dataset, part_dir: str, **kwargs) -> Particles:
    """Run :func:`run_relion_preprocess` and load its particles (n, box, box) in STAR order."""
    run_relion_preprocess(ds, part_dir, **kwargs)
    star = ds.root / part_dir / "particles.star"
    return load_particles(star, ds.root)


def relion_stack_create(star: Path, out_root: Path, cwd: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """``relion_stack_create --i star --o out_root`` in ``cwd``; returns its particle table and
    its stack (images in STAR order)."""
    proc = subprocess.run(
        ["relion_stack_create", "--i", str(star), "--o", str(out_root)],
        cwd=cwd, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RelionError(
            f"relion_stack_create failed with rc {proc.returncode}\n{proc.stderr[-4000:]}"
        )
    _, parts = read_particles_star(Path(str(out_root) + ".star"))
    return parts, read_stack(Path(str(out_root) + ".mrcs"))


# --------------------------------------------------------------------------- statistics
def background_mask(box: int, radius: float) -> np.ndarray:
    """RELION's background: pixels with i*i + j*j > r*r, i, j counted from the box centre
    (index box//2)."""
    i, j = np.mgrid[0:box, 0:box] - box // 2
    return (i * i + j * j) > radius * radius


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / den if den > 0 else float("nan")
