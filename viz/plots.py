"""Faithfulness and completeness curves as PNG (or SVG/PDF) plots.

A curve is a sequence of points with ``size``, ``fraction``, ``faithfulness`` and ``completeness``
(`circuits.evaluate.CurvePoint`, or plain dicts with those keys, as ``circuits evaluate --json``
prints them). Several labelled curves share one figure, so methods can be compared: faithfulness
on the left (ideal 1), completeness on the right (ideal 0). matplotlib is imported only here, and
only when a plot is drawn; it renders off-screen.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from circuits.files import replacing

__all__ = ["plot_curves"]


def _value(point: Any, key: str) -> float:
    return float(point[key] if isinstance(point, Mapping) else getattr(point, key))


def plot_curves(
    curves: Mapping[str, Sequence[Any]],
    path: str | os.PathLike,
    *,
    x: Literal["size", "fraction"] = "size",
    title: str | None = None,
) -> Path:
    """Draw faithfulness and completeness against circuit size for each labelled curve.

    Args:
        curves: ``{label: points}``; each point has ``size``, ``fraction``, ``faithfulness`` and
            ``completeness``.
        path: Output file; the suffix picks the format (``.png``, ``.svg``, ``.pdf``).
        x: ``size`` (nodes kept, log axis) or ``fraction`` (of all evaluated nodes, as MIB's
            CPR/CMD integrate it).
        title: Figure title.

    Returns:
        The path written.
    """
    if not curves or not any(curves.values()):
        raise ValueError("nothing to plot: give at least one curve with at least one point")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for label, points in curves.items():
        points = sorted(points, key=lambda p: _value(p, x))
        xs = [_value(p, x) for p in points]
        left.plot(xs, [_value(p, "faithfulness") for p in points], marker="o", label=label)
        right.plot(xs, [_value(p, "completeness") for p in points], marker="o", label=label)
    for axis, name, ideal in ((left, "faithfulness", 1.0), (right, "completeness", 0.0)):
        axis.axhline(ideal, color="grey", linewidth=0.8, linestyle="--")
        axis.set_xlabel("nodes kept" if x == "size" else "fraction of nodes kept")
        axis.set_ylabel(name)
        if x == "size" and all(_value(p, "size") > 0 for ps in curves.values() for p in ps):
            axis.set_xscale("log")
        axis.grid(alpha=0.3)
    left.legend()
    if title:
        figure.suptitle(title)
    path = Path(path)
    with replacing(path) as tmp:
        figure.savefig(tmp, dpi=120, format=path.suffix.lstrip(".") or "png")
    plt.close(figure)
    return path
