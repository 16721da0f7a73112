"""RELION's own programs read what we write, run from the project directory.

A small RELION-style project (simulated micrographs with CTF) is extracted with the
command line from the project directory, as a RELION user would; then
``relion_stack_create`` (extract, its ``--also-bin-to`` output, restack, downsample),
``relion_refine`` (2D classification with CTF) and ``relion_reconstruct`` (on
re-extracted particles with poses) run on our STAR files from the same directory. RELION
must find every image, and the images it reads must be ours pixel for pixel.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile

from cryoextract.sim.simulate import simulate_dataset
from helpers import cli_env
from prereq import require

BOX = 64
BIN_TO = 32


def _run(cmd: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False, env=cli_env())
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _ours(*args: str) -> list[str]:
    return [sys.executable, "-m", "cryoextract", *args]


def _relion(program: str) -> str:
    import shutil

    found = shutil.which(program)
    require(found, f"{program} not found (Debian package relion)")
    return str(found)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A RELION project directory with our extraction in Extract/job010."""
    root = tmp_path_factory.mktemp("project")
    simulate_dataset(root, n_micrographs=3, shape_yx=(512, 512), particles_per_micrograph=12,
                     pixel_size_angstrom=2.0, particle_diameter_angstrom=80.0,
                     edge_picks=False, seed=11)
    _run(_ours("extract", "--micrographs", "micrographs.star", "--coords-dir", "Picks",
               "--coords-suffix", "_autopick.star", "--box", str(BOX), "--also-bin-to",
               str(BIN_TO), "--out", "Extract/job010", "--quiet", "--no-report"), root)
    return root


def _stack_from_star(root: Path, star: str) -> np.ndarray:
    """The images of ``star`` as we read them: names relative to ``root`` (RELION's way)."""
    particles = starfile.read(root / star, always_dict=True)["particles"]
    images = []
    for name in particles["rlnImageName"]:
        index, path = str(name).split("@")
        assert not Path(path).is_absolute(), name
        with mrcfile.open(root / path, permissive=True) as mrc:
            images.append(np.asarray(mrc.data[int(index) - 1], dtype=np.float32))
    return np.stack(images)


def _relion_stack(root: Path, star: str, name: str) -> np.ndarray:
    _run([_relion("relion_stack_create"), "--i", star, "--o", f"Stacks/{name}"], root)
    with mrcfile.open(root / "Stacks" / f"{name}.mrcs", permissive=True) as mrc:
        return np.asarray(mrc.data, dtype=np.float32)


def test_image_names_are_relative_to_the_project(project: Path) -> None:
    for star in ("Extract/job010/particles.star", "Extract/job010/also_32px/particles.star"):
        particles = starfile.read(project / star, always_dict=True)["particles"]
        folder = str(Path(star).parent)
        assert all(str(n).split("@")[1].startswith(f"{folder}/Particles/")
                   for n in particles["rlnImageName"]), star
        # the same base as the micrograph names in the same rows
        assert all((project / m).is_file() for m in particles["rlnMicrographName"])


@pytest.mark.parametrize("star", ["Extract/job010/particles.star",
                                  "Extract/job010/also_32px/particles.star"])
def test_relion_stack_create_reads_extract_output(project: Path, star: str) -> None:
    name = Path(star).parent.name
    relion = _relion_stack(project, star, name)
    ours = _stack_from_star(project, star)
    assert relion.shape[0] == len(ours) > 30
    np.testing.assert_array_equal(relion, ours)


def test_relion_stack_create_reads_restack_and_downsample(project: Path) -> None:
    _run(_ours("restack", "--particles", "Extract/job010/particles.star", "--out",
               "Restack/job011", "--batch-size", "10"), project)
    _run(_ours("downsample", "--particles", "Restack/job011/particles.star", "--box", "48",
               "--out", "Downsample/job012"), project)
    for star, name in (("Restack/job011/particles.star", "restack"),
                       ("Downsample/job012/particles.star", "downsample")):
        relion = _relion_stack(project, star, name)
        ours = _stack_from_star(project, star)
        assert relion.shape[0] == len(ours) > 30
        np.testing.assert_array_equal(relion, ours)
    restacked = starfile.read(project / "Restack/job011/particles.star",
                              always_dict=True)["particles"]
    extracted = starfile.read(project / "Extract/job010/particles.star",
                              always_dict=True)["particles"]
    # the original names point at the extraction's stacks, in the project's form
    assert list(restacked["rlnImageOriginalName"]) == list(extracted["rlnImageName"])


def test_relion_refine_classifies_our_particles(project: Path) -> None:
    (project / "Class2D/job013").mkdir(parents=True, exist_ok=True)
    _run([_relion("relion_refine"), "--i", "Extract/job010/particles.star", "--o",
          "Class2D/job013/run", "--K", "2", "--iter", "2", "--tau2_fudge", "2",
          "--particle_diameter", "100", "--ctf", "--zero_mask", "--oversampling", "1",
          "--psi_step", "30", "--offset_range", "3", "--offset_step", "2", "--j", "2",
          "--pool", "10", "--dont_combine_weights_via_disc"], project, timeout=600)
    model = project / "Class2D/job013/run_it002_model.star"
    data = starfile.read(project / "Class2D/job013/run_it002_data.star", always_dict=True)
    extracted = starfile.read(project / "Extract/job010/particles.star", always_dict=True)
    assert model.is_file()
    assert len(data["particles"]) == len(extracted["particles"])


def test_relion_reconstruct_reads_reextracted_particles(project: Path) -> None:
    """Poses added to our particles, re-extracted by us, reconstructed by RELION."""
    blocks = starfile.read(project / "Extract/job010/particles.star", always_dict=True)
    particles = blocks["particles"]
    rng = np.random.default_rng(3)
    particles["rlnAngleRot"] = rng.uniform(-180, 180, len(particles))
    particles["rlnAngleTilt"] = rng.uniform(0, 180, len(particles))
    particles["rlnAnglePsi"] = rng.uniform(-180, 180, len(particles))
    starfile.write(blocks, project / "Refine3D_poses.star", overwrite=True)
    _run(_ours("extract", "--micrographs", "micrographs.star", "--coords",
               "Refine3D_poses.star", "--box", str(BOX), "--out", "Extract/job014",
               "--quiet", "--no-report"), project)
    (project / "Reconstruct").mkdir(exist_ok=True)
    _run([_relion("relion_reconstruct"), "--i", "Extract/job014/particles.star", "--o",
          "Reconstruct/map.mrc", "--ctf"], project)
    with mrcfile.open(project / "Reconstruct/map.mrc", permissive=True) as mrc:
        volume = np.asarray(mrc.data)
    assert volume.shape == (BOX, BOX, BOX) and np.isfinite(volume).all() and volume.std() > 0


def test_relion_reconstruct_reads_subtracted_and_reverted_particles(project: Path) -> None:
    """Subtraction (and its revert) from the project directory: RELION reads both."""
    if not (project / "Reconstruct/map.mrc").is_file():
        test_relion_reconstruct_reads_reextracted_particles(project)
    z, y, x = np.mgrid[:BOX, :BOX, :BOX] - BOX // 2
    mask = ((x - 8) ** 2 + y**2 + z**2 < 12**2).astype(np.float32)
    with mrcfile.new(project / "Reconstruct/mask.mrc", overwrite=True) as mrc:
        mrc.set_data(mask)
        mrc.voxel_size = 2.0
    _run(_ours("subtract", "--particles", "Extract/job014/particles.star", "--map",
               "Reconstruct/map.mrc", "--mask", "Reconstruct/mask.mrc", "--scale", "none",
               "--workers", "1", "--out", "Subtract/job015"), project)
    _run(_ours("subtract", "--revert", "Subtract/job015/particles.star", "--out",
               "Revert/job016"), project)
    for star, name in (("Subtract/job015/particles.star", "subtracted"),
                       ("Revert/job016/particles.star", "reverted")):
        particles = starfile.read(project / star, always_dict=True)["particles"]
        for column in ("rlnImageName", "rlnImageOriginalName"):
            assert all((project / str(n).split("@")[1]).is_file() for n in particles[column])
        _run([_relion("relion_reconstruct"), "--i", star, "--o", f"Reconstruct/{name}.mrc",
              "--ctf"], project)
        with mrcfile.open(project / f"Reconstruct/{name}.mrc", permissive=True) as mrc:
            assert np.isfinite(np.asarray(mrc.data)).all()
    reverted = starfile.read(project / "Revert/job016/particles.star",
                             always_dict=True)["particles"]
    extracted = starfile.read(project / "Extract/job014/particles.star",
                              always_dict=True)["particles"]
    assert list(reverted["rlnImageName"]) == list(extracted["rlnImageName"])


def test_paths_relative_to_star_and_outside_the_project(
    project: Path, tmp_path: Path
) -> None:
    """``--paths relative-to-star``: names relative to the STAR's folder (RELION reads them
    from there); an output outside the working directory: absolute names."""
    common = ["extract", "--micrographs", "micrographs.star", "--coords-dir", "Picks",
              "--coords-suffix", "_autopick.star", "--box", str(BOX), "--quiet", "--no-report"]
    _run(_ours(*common, "--out", "Extract/job020", "--paths", "relative-to-star"), project)
    star = project / "Extract/job020/particles.star"
    names = starfile.read(star, always_dict=True)["particles"]["rlnImageName"]
    assert all(str(n).split("@")[1].startswith("Particles/") for n in names)
    (project / "Extract/job020/Stacks").mkdir()
    _run([_relion("relion_stack_create"), "--i", "particles.star", "--o", "Stacks/all"],
         project / "Extract/job020")
    outside = tmp_path / "elsewhere"
    _run(_ours(*common, "--out", str(outside)), project)
    names = starfile.read(outside / "particles.star", always_dict=True)["particles"][
        "rlnImageName"]
    assert all(str(n).split("@")[1].startswith(f"{outside}/Particles/") for n in names)
    relion = _relion_stack(project, str(outside / "particles.star"), "outside")
    assert relion.shape[0] == len(names)


def test_a_missing_stack_is_named_with_both_places_looked_in(project: Path) -> None:
    """Readers look relative to the working directory, then the STAR's folder."""
    blocks = starfile.read(project / "Extract/job010/particles.star", always_dict=True)
    blocks["particles"]["rlnImageName"] = "000001@Nowhere/stack.mrcs"
    starfile.write(blocks, project / "broken.star", overwrite=True)
    proc = subprocess.run(_ours("restack", "--particles", "broken.star", "--out", "Broken"),
                          cwd=project, capture_output=True, text=True, timeout=120,
                          check=False, env=cli_env())
    assert proc.returncode == 2
    message = " ".join(proc.stderr.split())
    assert "Nowhere/stack.mrcs" in message and str(project) in message
