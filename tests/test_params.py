"""The typed parameters of an extraction job (``cryoextract.pipeline.extraction.params``):
bad boxes, radii and dust refused; sizes reported; the output box of ``--bin-to``,
``--bin-factor`` and ``--pixel-size-out``.

Every expected value comes from an independent oracle: an analytic result or a naive
numpy re-implementation written here (never numbers copied from running our code).
"""

from __future__ import annotations

import pytest

from cryoextract.errors import ParameterError
from cryoextract.pipeline.extraction.params import ExtractParams, resolve_output_box


# --------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("box", [63, 0, -64, 1, -2])
def test_params_reject_bad_boxes(box: int) -> None:
    with pytest.raises(ParameterError):
        ExtractParams(box_px=box)


@pytest.mark.parametrize("out_box", [130, 63, 0, -32])
def test_params_reject_bad_output_boxes(out_box: int) -> None:
    with pytest.raises(ParameterError):
        ExtractParams(box_px=128, out_box_px=out_box)


def test_params_accept_and_report_sizes() -> None:
    p = ExtractParams(box_px=256, out_box_px=128)
    assert p.output_box_px == 128
    assert p.output_pixel_size(1.0) == 2.0
    assert p.output_pixel_size(0.8538) == 0.8538 * 2
    assert p.background_radius_px == 48.0  # round(0.375 * 128)
    q = ExtractParams(box_px=256, out_box_px=86)
    assert q.output_pixel_size(1.0) == pytest.approx(256 / 86, rel=1e-15)
    r = ExtractParams(box_px=64)
    assert r.output_box_px == 64
    assert r.output_pixel_size(1.5) == 1.5
    assert r.background_radius_px == 24.0


def test_params_reject_bad_radius_and_dust() -> None:
    with pytest.raises(ParameterError):
        ExtractParams(box_px=64, bg_radius_px=33)
    with pytest.raises(ParameterError):
        ExtractParams(box_px=64, bg_radius_px=0)
    with pytest.raises(ParameterError):
        ExtractParams(box_px=64, white_dust_sigma=0)
    with pytest.raises(ParameterError):
        ExtractParams(box_px=64, black_dust_sigma=-1)


def test_resolve_output_box() -> None:
    assert resolve_output_box(256) is None
    assert resolve_output_box(256, bin_to_px=128) == 128
    assert resolve_output_box(256, bin_to_px=256) is None
    assert resolve_output_box(256, bin_factor=2) == 128
    assert resolve_output_box(256, bin_factor=3) == 86  # 85.33 -> nearest even
    assert resolve_output_box(256, bin_factor=1) is None
    assert resolve_output_box(256, pixel_size_out_angstrom=2.0, pixel_size_angstrom=1.0) == 128
    assert resolve_output_box(200, pixel_size_out_angstrom=3.0, pixel_size_angstrom=1.06) == 70
    with pytest.raises(ParameterError):
        resolve_output_box(256, bin_to_px=128, bin_factor=2)
    with pytest.raises(ParameterError):
        resolve_output_box(256, bin_factor=0.5)
    with pytest.raises(ParameterError):
        resolve_output_box(256, pixel_size_out_angstrom=0.5, pixel_size_angstrom=1.0)
    with pytest.raises(ParameterError):
        resolve_output_box(256, pixel_size_out_angstrom=2.0)
