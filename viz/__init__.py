"""Circuit diagrams, exports, dashboards, curve plots and the explorer page."""

import importlib

from viz.annotations import (
    AnnotationFormatError,
    read_annotations,
    write_annotations,
)
from viz.diagram import GraphvizMissing, diagram, render, to_svg
from viz.explorer import explorer_html, write_explorer
from viz.export import to_neuronpedia, write_graphml, write_neuronpedia

__all__ = [
    "AnnotationFormatError",
    "GraphvizMissing",
    "diagram",
    "explorer_html",
    "read_annotations",
    "render",
    "to_neuronpedia",
    "to_svg",
    "write_annotations",
    "write_explorer",
    "write_graphml",
    "write_neuronpedia",
]

# Dashboards need torch and the model, plots need matplotlib; load them only when asked for.
_LAZY = {
    "dashboards": "viz.dashboard",
    "auto_labels": "viz.dashboard",
    "plot_curves": "viz.plots",
}
__all__ += list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'viz' has no attribute {name!r}")
