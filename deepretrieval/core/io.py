"""File helpers shared by every writer: nothing half-written on failure."""
from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

_OWNER = ".owner-pid"
_OLD = ".old-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(path: str | os.PathLike) -> list[Path]:
    """Remove what killed writers of ``path`` left beside it: temp folders whose owner process is
    gone, and the previous version set aside during a swap (restored instead when ``path`` itself
    is missing, i.e. the swap was cut between its two renames). Returns the folders removed."""
    path = Path(path)
    removed: list[Path] = []
    if not path.parent.is_dir():
        return removed
    for item in sorted(path.parent.glob(f".{path.name}.*")):
        if not item.is_dir():
            continue
        if item.name.startswith(f".{path.name}{_OLD}"):
            if not path.exists():
                os.replace(item, path)      # put the previous version back
                continue
        else:
            try:
                owner = int((item / _OWNER).read_text().strip())
            except (OSError, ValueError):
                continue                    # not ours, or its writer is still creating it
            if _pid_alive(owner) and owner != os.getpid():
                continue                    # a build in progress in another process
            if owner == os.getpid():
                continue
        shutil.rmtree(item, ignore_errors=True)
        removed.append(item)
    return removed


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp directory beside ``path``; on success it replaces ``path``, on failure it is
    removed and ``path`` is left as it was. The replacement never leaves a half-deleted ``path``:
    the old version is renamed aside, the new one renamed in, and only then is the old one deleted.
    Leftovers of writers that were killed are cleaned first (:func:`clean_stale`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    old = None
    try:
        (tmp / _OWNER).write_text(str(os.getpid()))
        yield tmp
        (tmp / _OWNER).unlink(missing_ok=True)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}{_OLD}", dir=path.parent))
            os.replace(path, old)           # a directory replaces an empty directory
        os.replace(tmp, path)
    except BaseException:
        if old is not None and not path.exists():
            os.replace(old, path)           # interrupted between the two renames: undo
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp file path beside ``path`` (same suffix, so writers that pick a format by it
    work); on success it replaces ``path`` (mode 0644), on failure it is removed and ``path`` is
    left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write a file (text as UTF-8) atomically."""
    with atomic_write(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt  # optional: the [trl] extra
    try:
        with atomic_write(path) as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    return Path(path)


class DeferredJson:
    """A JSON file written atomically (folders made) on the first :meth:`write` only — e.g. a
    run's ``run.json`` written with its first finished rows, so a run that fails before any
    result leaves nothing behind. ``path`` None: writing does nothing."""

    def __init__(self, path: str | os.PathLike | None, value) -> None:
        self.path = Path(path) if path is not None else None
        self.value = value
        self.written = False

    def write(self) -> None:
        if self.path is not None and not self.written:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps(self.value, indent=2))
            self.written = True


def append_json_lines(path: str | os.PathLike, values: Iterable, default=None) -> None:
    """Append values as JSON lines and fsync, so what a resumable run has written survives a
    crash."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(v, default=default) + "\n" for v in values))
        fh.flush()
        os.fsync(fh.fileno())


def write_json_lines_gz(path: str | os.PathLike, values: Iterable) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for value in values:
            fh.write(json.dumps(value) + "\n")


def read_json_lines_gz(path: str | os.PathLike) -> list:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]
