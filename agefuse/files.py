"""Files written whole or not at all: ``atomic_write`` is the one way agefuse replaces a file
that a kill must not leave half-written (a manifest, a crop, a checkpoint, a fused model, a
features cache). A write that fails (a full disk, a file size limit) is a ``WriteError``
naming the file, where the system's own error names none.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class WriteError(OSError):
    """A file that could not be written; its message names the file and the system's reason."""

    def __str__(self) -> str:
        return str(self.strerror)


def write_error(path: str | Path, err: OSError) -> OSError:
    """``err`` naming ``path`` when it names no file (ENOSPC on a write says only "No space
    left on device"); an error that names its file already is kept."""
    if isinstance(err, WriteError) or err.filename is not None:
        return err
    return WriteError(err.errno, f"{path}: cannot be written ({err.strerror or err})")


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; when the block ends without an error it
    replaces ``path`` in one rename, so a reader (or a kill during the write) sees the old
    file or the new one, never part of it. On an error the temporary file is removed.

    The temporary name is ``.<name>.tmp-<pid>``: hidden, one per process, and the pattern
    agefuse-regions clears from a cache on a rerun (``regions.pipeline.remove_stale_temporaries``).
    A writer that appends a suffix to a bare path (``numpy.savez`` adds ``.npz``) is handed an
    open file instead::

        with atomic_write(path) as tmp:
            torch.save(state, tmp)
        with atomic_write(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise write_error(path, err) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
