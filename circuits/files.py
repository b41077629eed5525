"""Writing files so that readers only ever see a whole file.

`replacing(path)` yields a fresh temporary path beside ``path``; when the block ends without an
error the temporary file is renamed over ``path`` (``os.replace``: atomic within one file
system), otherwise it is removed. The temporary name is created exclusively by
``tempfile.mkstemp``, so concurrent writers never share one and a file or link planted under a
guessable name is never written through; a link at ``path`` itself is replaced, not followed.
The file gets the permissions a plain ``open(path, "w")`` would give it (``0o666`` less the
umask). In a distributed run (`circuits.distributed`) only rank 0 writes: the others' temporary
files are removed instead of renamed.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from circuits.distributed import rank

__all__ = ["replacing", "write_text"]


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """``with replacing(path) as tmp: torch.save(state, tmp)``: ``path`` appears whole or not at
    all."""
    path = Path(path)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        if rank() != 0:
            tmp.unlink()
            return
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through `replacing`; returns the path."""
    path = Path(path)
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
