"""Curve plots: the file is an image of the data, and bad input is refused."""

import pytest

from circuits.evaluate import CurvePoint
from viz.plots import plot_curves


def points(scale: float) -> list[CurvePoint]:
    return [
        CurvePoint(size=k, fraction=k / 100, faithfulness=scale * k / 100, completeness=1 - k / 100)
        for k in (1, 10, 50, 100)
    ]


def test_png_holds_a_drawing(tmp_path):
    import matplotlib.image

    path = plot_curves({"ig": points(1.0), "atp": points(0.5)}, tmp_path / "c.png", title="t")
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_svg_draws_every_curve_and_accepts_plain_dicts(tmp_path):
    as_dicts = [vars(p) for p in points(1.0)]
    path = plot_curves({"first": as_dicts, "second": points(0.3)}, tmp_path / "c.svg", x="fraction")
    svg = path.read_text()
    assert "first" in svg and "second" in svg and "faithfulness" in svg


def test_nothing_to_plot_is_refused(tmp_path):
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_curves({}, tmp_path / "c.png")
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_curves({"empty": []}, tmp_path / "c.png")
