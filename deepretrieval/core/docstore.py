"""Strings on disk, read by position: one UTF-8 blob plus its offsets, memory-mapped.

A *column* ``NAME`` in a folder is two files: ``NAME.bin`` (the strings' UTF-8 bytes, one after
the other) and ``NAME.idx`` (``n + 1`` little-endian uint64 offsets; string ``i`` is
``bin[idx[i]:idx[i + 1]]``). Opening a column maps both files and reads nothing else, so a
process holding 21M passages keeps only the pages of the passages it returned; the strings are
decoded when asked for.

:class:`StringColumnWriter` appends strings and can resume a column cut short: it truncates both
files back to a given number of strings (what a resumable build recorded as done).
"""
from __future__ import annotations

import mmap
import os
from itertools import islice
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import overload

import numpy as np

_OFFSET = np.dtype("<u8")


def column_exists(folder: str | os.PathLike, name: str) -> bool:
    folder = Path(folder)
    return (folder / f"{name}.idx").exists() and (folder / f"{name}.bin").exists()


class StringColumn(Sequence[str]):
    """Random access to the strings of a column (``column[i]``, ``column.take(indices)``,
    ``len``, iteration); nothing is read until asked for."""

    def __init__(self, folder: str | os.PathLike, name: str) -> None:
        folder = Path(folder)
        self.path = folder / f"{name}.bin"
        idx = folder / f"{name}.idx"
        # a plain ndarray over the mapping: np.memmap's Python-level __getitem__ cost a third of
        # gathering 1,000 ids
        self.offsets = np.memmap(idx, dtype=_OFFSET, mode="r").view(np.ndarray) \
            if idx.stat().st_size else np.zeros(1, dtype=_OFFSET)
        if len(self.offsets) < 1:
            raise ValueError(f"{idx}: empty offsets file")
        size = self.path.stat().st_size
        if int(self.offsets[-1]) != size:
            raise ValueError(f"{self.path}: {size} bytes, the offsets say {int(self.offsets[-1])} "
                             f"(a write was cut short)")
        self._bytes: np.ndarray | None = None
        if size:
            with open(self.path, "rb") as f:
                self.blob: mmap.mmap | bytes = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._bytes = np.frombuffer(self.blob, dtype=np.uint8)
        else:
            self.blob = b""

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def raw(self) -> tuple[np.ndarray, np.ndarray]:
        """(bytes, offsets): the column's UTF-8 bytes as a uint8 array (memory-mapped) and its
        ``n + 1`` offsets as int64; string ``i`` is ``bytes[offsets[i]:offsets[i + 1]]``."""
        data = self._bytes if self._bytes is not None else np.zeros(0, dtype=np.uint8)
        return data, np.asarray(self.offsets).view(np.int64)

    def _one(self, i: int) -> str:
        a, b = self.offsets[i:i + 2].tolist()
        return self.blob[a:b].decode("utf-8")

    @overload
    def __getitem__(self, i: int) -> str: ...

    @overload
    def __getitem__(self, i: slice) -> list[str]: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.take(range(*i.indices(len(self))))
        i = int(i)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"string {i} out of range ({n} strings)")
        return self._one(i)

    def take(self, indices: Iterable[int]) -> list[str]:
        """The strings at ``indices`` (in that order)."""
        idx = np.asarray(indices if not isinstance(indices, range) else np.arange(
            indices.start, indices.stop, indices.step), dtype=np.int64)
        if not len(idx):
            return []
        n = len(self)
        if idx.min() < 0 or idx.max() >= n:
            raise IndexError(f"string index out of range ({n} strings)")
        blob = self.blob
        starts, ends = self.offsets[idx], self.offsets[idx + 1]
        lens = (ends - starts).astype(np.int64)
        total = int(lens.sum())
        if len(idx) >= 32 and total <= 64 * len(idx) and self._bytes is not None:
            # many short strings (ids): gather all bytes at once with a NUL after each, decode
            # once, split (C speed); strings that hold a NUL themselves, and a few strings (its
            # dozen numpy calls cost more than a few decodes: the evidence reward's top 10 ids),
            # take the general path
            n = len(idx)
            cum = np.concatenate([[0], np.cumsum(lens)])
            data = self._bytes[np.repeat(starts.astype(np.int64) - cum[:-1], lens)
                               + np.arange(total)]
            if not (data == 0).any():
                out = np.zeros(total + n, dtype=np.uint8)
                out[np.arange(total) + np.repeat(np.arange(n), lens)] = data
                return out[:-1].tobytes().decode("utf-8").split("\x00")
        return [blob[a:b].decode("utf-8") for a, b in zip(starts.tolist(), ends.tolist())]

    def __iter__(self) -> Iterator[str]:
        for i in range(len(self)):
            yield self._one(i)


class StringColumnWriter:
    """Append strings to a column. ``resume_at`` (strings already written and kept) truncates the
    files to that many strings first (0: start a new column). Call :meth:`flush` to make what was
    appended durable in the files, :meth:`close` at the end."""

    def __init__(self, folder: str | os.PathLike, name: str, resume_at: int = 0,
                 buffer_bytes: int = 8 << 20) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.bin_path, self.idx_path = folder / f"{name}.bin", folder / f"{name}.idx"
        if resume_at:
            offsets = np.fromfile(self.idx_path, dtype=_OFFSET, count=resume_at + 1)
            if len(offsets) != resume_at + 1:
                raise ValueError(f"{self.idx_path}: fewer than {resume_at} strings to resume from")
            end = int(offsets[-1])
            with open(self.idx_path, "r+b") as f:
                f.truncate((resume_at + 1) * _OFFSET.itemsize)
            with open(self.bin_path, "r+b") as f:
                if f.seek(0, 2) < end:
                    raise ValueError(f"{self.bin_path}: shorter than its offsets")
                f.truncate(end)
            self.end, self.count = end, resume_at
            self._bin, self._idx = open(self.bin_path, "ab"), open(self.idx_path, "ab")
        else:
            self._bin, self._idx = open(self.bin_path, "wb"), open(self.idx_path, "wb")
            self._idx.write(np.zeros(1, dtype=_OFFSET).tobytes())
            self.end, self.count = 0, 0
        self._parts: list[bytes] = []
        self._offs: list[int] = []
        self._buffered = 0
        self._limit = buffer_bytes

    def append(self, text: str) -> None:
        self.extend((text,))

    def extend(self, texts: Iterable[str]) -> None:
        """Append many strings: encoded, joined and their offsets computed a batch at a time."""
        it = iter(texts)
        while True:
            data = [t.encode("utf-8") for t in islice(it, 65536)]
            if not data:
                return
            ends = self.end + np.cumsum(np.fromiter(map(len, data), dtype=np.int64,
                                                    count=len(data)))
            blob = b"".join(data)
            self._parts.append(blob)
            self._offs.extend(ends.tolist())
            self.end = int(ends[-1])
            self.count += len(data)
            self._buffered += len(blob)
            if self._buffered >= self._limit:
                self._write()

    def _write(self) -> None:
        if self._parts:
            self._bin.write(b"".join(self._parts))
            self._idx.write(np.asarray(self._offs, dtype=_OFFSET).tobytes())
            self._parts, self._offs, self._buffered = [], [], 0

    def flush(self) -> None:
        self._write()
        self._bin.flush()
        self._idx.flush()
        os.fsync(self._bin.fileno())
        os.fsync(self._idx.fileno())

    def close(self) -> None:
        self.flush()
        self._bin.close()
        self._idx.close()
