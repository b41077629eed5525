"""Circuit discovery and causal analysis in language models.

The top-level names load lazily so that ``circuits --version`` and ``import circuits`` stay fast;
torch and nnsight are imported on first use of a name that needs them.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("circuits")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

_EXPORTS = {
    "load_model": "circuits.models",
    "Model": "circuits.models",
    "Submodule": "circuits.models",
    "Architecture": "circuits.models",
    "register_architecture": "circuits.models",
    "Dictionary": "circuits.dictionaries",
    "load_dictionary": "circuits.dictionaries",
    "load_dictionaries": "circuits.dictionaries",
    "save_dictionary": "circuits.dictionaries",
    "train_dictionaries": "circuits.dictionaries",
    "Circuit": "circuits.graph",
    "load_task": "circuits.tasks",
    "Task": "circuits.tasks",
    "PromptPair": "circuits.tasks",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'circuits' has no attribute {name!r}")
