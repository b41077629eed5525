"""The shipped small model world: language, model, SAEs and tasks."""

from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
"""Where the installed zoo's artefacts live."""
