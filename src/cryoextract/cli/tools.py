"""``cryoextract boxsize`` and ``cryoextract simulate``: thin wrappers over the library.

Registered on the main app by :mod:`cryoextract.cli.app`; like every command module this
one declares the options only and imports the library when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cryoextract.cli.common import fail, out
from cryoextract.errors import CryoExtractError


def boxsize_command(
    diameter_angstrom: Annotated[float, typer.Option(help="Particle diameter D in A.")],
    pixel_size: Annotated[float, typer.Option(help="Micrograph pixel size in A.")],
    defocus_um: Annotated[float, typer.Option(help="Defocus in um (use the largest).")],
    resolution_angstrom: Annotated[float, typer.Option(help="Target resolution d in A.")],
    voltage_kv: Annotated[float, typer.Option(help="Acceleration voltage in kV.")] = 300.0,
    crop_resolution_angstrom: Annotated[float, typer.Option(
        help="Nyquist wanted for a Fourier-cropped copy (2D classification).")] = 8.0,
) -> None:
    """Box sizes for a particle: Rosenthal & Henderson B = D + 2*lambda*dF/d."""
    from rich.table import Table

    from cryoextract.ops.boxsize import advise_box

    try:
        advice = advise_box(diameter_angstrom, pixel_size, defocus_um * 1e4,
                            resolution_angstrom, voltage_kv,
                            crop_resolution_angstrom=crop_resolution_angstrom)
    except CryoExtractError as exc:
        fail(str(exc))
        return
    table = Table(title="cryoextract boxsize", show_header=False)
    table.add_row("electron wavelength", f"{advice.wavelength_angstrom:.5f} A")
    table.add_row("delocalisation R = lambda*dF/d", f"{advice.delocalisation_angstrom:.1f} A")
    table.add_row("box D + 2R", f"{advice.box_angstrom:.1f} A")
    table.add_row("extraction box (even, FFT-efficient)", f"{advice.box_px} px")
    table.add_row(f"Fourier-crop box (Nyquist <= {advice.crop_resolution_angstrom:g} A)",
                  f"{advice.crop_box_px} px ({advice.crop_pixel_size_angstrom:.4g} A/px)")
    table.add_row("CTF padding box (Nyquist of the extraction box)", f"{advice.ctf_box_px} px")
    out.print(table)


def simulate_command(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the dataset.")],
    micrographs: Annotated[int, typer.Option(help="Number of micrographs.")] = 4,
    size: Annotated[int, typer.Option(help="Micrograph side in pixels.")] = 1024,
    particles: Annotated[int, typer.Option(help="Particles per micrograph.")] = 60,
    pixel_size: Annotated[float, typer.Option(help="Pixel size in A.")] = 1.5,
    dtype: Annotated[str, typer.Option(help="float32, float16 or uint16.")] = "float32",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    overwrite: Annotated[bool, typer.Option(
        help="Replace a dataset in a folder that is not empty.")] = False,
) -> None:
    """Write a small realistic dataset: micrographs with CTF and noise, picks, a STAR."""
    from cryoextract.sim.simulate import simulate_dataset

    try:
        dataset = simulate_dataset(
            out_dir, n_micrographs=micrographs, shape_yx=(size, size),
            particles_per_micrograph=particles, pixel_size_angstrom=pixel_size,
            dtype=dtype, seed=seed, overwrite=overwrite,  # type: ignore[arg-type]
        )
    except CryoExtractError as exc:
        fail(str(exc))
        return
    out.print(
        f"simulated {len(dataset.micrograph_paths)} micrographs ({size}x{size} px, "
        f"{pixel_size} A/px, {dtype}) with {particles} picks each in {out_dir}; "
        f"suggested box {dataset.box_px} px"
    )
