"""Where a dense index's vectors live and how they are searched ("placement"), how much memory
each placement takes (computed before anything is loaded), and the searchers themselves.

Placements (``KIND[:key=value,...]``, e.g. ``torch:gpus=0-3``, ``ivfpq:nlist=4096,nprobe=64``):

=========  ==================================================================  ======  ================
kind       what                                                                exact?  memory (N × d)
=========  ==================================================================  ======  ================
flat       faiss ``IndexFlatIP`` in RAM, filled block by block                  yes     4·N·d RAM
stream     exact search reading ``embeddings.npy`` block by block per search    yes     one block of RAM
torch      exact matmul + top-k in torch; ``gpus=`` shards rows over GPUs       yes*    2·N·d (float16),
           (``device=cpu`` without); ``dtype`` float16 / float32 / sq8                  4·N·d, 1·N·d (sq8)
sq8        faiss ``IndexScalarQuantizer`` 8-bit                                  no      1·N·d RAM
ivf        faiss ``IVF{nlist},Flat`` (``nprobe``)                               no      4·N·d + 8·N RAM
ivfsq8     faiss ``IVF{nlist},SQ8``                                             no      1·N·d + 8·N RAM
ivfpq      faiss ``IVF{nlist},PQ{pq_m}`` (8-bit codes)                           no      pq_m·N + 8·N RAM
hnsw       faiss ``HNSW{m}`` (``ef_construction``, ``ef_search``)               no      4·N·d + 8.4·m·N
hnswsq8    faiss ``HNSW{m},SQ8``                                                no      1·N·d + 8.4·m·N
=========  ==================================================================  ======  ================

(*) ``torch`` with float32 is exact; float16 keeps the vectors in half precision (as faiss-GPU's
``useFloat16`` and Search-R1 do) and scores candidates in float32; ``sq8`` quantises each dimension
to 8 bits (faiss's ``QT_8bit`` rule) and is approximate.

Vectors are read from the ``.npy`` file with ``pread`` into one reused block buffer (never through
a memory map, whose touched pages would count in the process's RSS), so building or loading any
placement holds at most one block (``DEEPRETRIEVAL_DENSE_BLOCK_MB``, default 256 MB) beyond the
placement itself. :func:`plan` computes the bytes a placement takes on each device before loading;
:func:`check_fits` refuses with the numbers when it exceeds the free RAM (or
``DEEPRETRIEVAL_DENSE_RAM_GB``) or a GPU's free memory.

Nothing here imports torch or faiss at module import time.
"""
from __future__ import annotations

import logging
import math
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from deepretrieval.core import settings

log = logging.getLogger(__name__)

KINDS = ("flat", "stream", "torch", "sq8", "ivf", "ivfsq8", "ivfpq", "hnsw", "hnswsq8")
EXACT_KINDS = ("flat", "stream")
FAISS_KINDS = ("flat", "sq8", "ivf", "ivfsq8", "ivfpq", "hnsw", "hnswsq8")
TRAINED_KINDS = ("sq8", "ivf", "ivfsq8", "ivfpq", "hnswsq8")
GPU_FAISS_KINDS = ("flat", "sq8", "ivf", "ivfsq8", "ivfpq")  # faiss has no GPU HNSW
TORCH_DTYPES = ("float16", "float32", "sq8")
GB = 1e9
#: The reference size printed next to every plan: DPR's wiki-18 (21,015,324 passages) with a
#: 768-dimensional encoder (e5-base-v2).
WIKI18 = (21_015_324, 768)
#: bytes per vector of an HNSW graph beyond the vectors: level 0 holds 2·M int32 neighbours,
#: upper levels add about 1/(M-1) of that, plus the level table (faiss HNSW layout).
_HNSW_LINK_BYTES = 8.4


class PlacementError(ValueError):
    """A placement that cannot be used here (unknown, malformed, or too large for the machine)."""


# ---------------------------------------------------------------------------------------------
# the placement spec

@dataclass(frozen=True)
class Placement:
    """How a dense index is held and searched. ``None`` fields take a size-dependent default
    (:meth:`resolved`)."""

    kind: str = "flat"
    gpus: tuple[int, ...] = ()
    dtype: str | None = None          # torch: float16 (GPU default) / float32 (CPU default) / sq8
    nlist: int | None = None          # ivf*: default 4·sqrt(N), a power of two
    nprobe: int = 64                  # ivf*: lists visited per query
    pq_m: int | None = None           # ivfpq: bytes per vector (default d/8)
    m: int = 32                       # hnsw*: graph degree
    ef_construction: int = 200
    ef_search: int = 256
    train_rows: int | None = None     # trained kinds: sample size (default max(64·nlist, 100k))
    rerank: int = 0                   # approximate kinds: rescore k·rerank candidates exactly

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise PlacementError(f"unknown dense placement {self.kind!r} (known: {list(KINDS)})")
        if self.dtype is not None and self.dtype not in TORCH_DTYPES:
            raise PlacementError(f"unknown dtype {self.dtype!r} (known: {list(TORCH_DTYPES)})")
        if self.dtype is not None and self.kind != "torch":
            raise PlacementError("dtype= applies to the torch placement only")
        if self.gpus and self.kind not in ("torch",) + GPU_FAISS_KINDS:
            raise PlacementError(f"placement {self.kind!r} has no GPU form (GPU: torch, or "
                                 f"faiss-gpu for {list(GPU_FAISS_KINDS)})")
        if len(set(self.gpus)) != len(self.gpus) or any(g < 0 for g in self.gpus):
            raise PlacementError(f"gpus must be distinct GPU numbers, got {list(self.gpus)}")
        for name in ("nprobe", "m", "ef_construction", "ef_search"):
            if int(getattr(self, name)) < 1:
                raise PlacementError(f"{name} must be >= 1")
        if self.rerank < 0 or (self.rerank and self.kind in ("flat", "stream", "torch")):
            raise PlacementError("rerank= (a whole number >= 2) applies to the approximate faiss "
                                 "placements only")
        for name in ("nlist", "pq_m", "train_rows"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise PlacementError(f"{name} must be >= 1")

    @classmethod
    def parse(cls, spec: str) -> "Placement":
        """``"ivfpq:nlist=4096,nprobe=64,pq_m=96"``, ``"torch:gpus=0-3,dtype=float16"``."""
        spec = str(spec).strip()
        kind, _, rest = spec.partition(":")
        known = {f.name: f for f in fields(cls) if f.name != "kind"}
        values: dict[str, Any] = {}
        # gpus take commas too ("gpus=0,1"): split on "," only before a "key="
        parts = re.split(r",(?=\s*[a-z_]+\s*=)", rest) if rest.strip() else []
        for item in parts:
            key, sep, value = item.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or key not in known:
                raise PlacementError(f"placement {spec!r}: {item.strip()!r} is not one of "
                                     f"{sorted(known)} as key=value")
            if key == "gpus":
                values[key] = parse_gpus(value)
            elif key == "dtype":
                values[key] = value
            else:
                try:
                    values[key] = int(value)
                except ValueError:
                    raise PlacementError(f"placement {spec!r}: {key} must be a whole number, "
                                         f"got {value!r}") from None
        return cls(kind=kind.strip() or "flat", **values)

    def spec(self) -> str:
        """The spec string :meth:`parse` reads back (only fields that differ from the defaults)."""
        default = Placement(kind=self.kind)
        items = []
        for f in fields(self):
            if f.name == "kind":
                continue
            value = getattr(self, f.name)
            if value != getattr(default, f.name):
                items.append(f"{f.name}={','.join(map(str, value)) if f.name == 'gpus' else value}")
        return self.kind + (":" + ",".join(items) if items else "")

    def resolved(self, num_docs: int, dim: int) -> "Placement":
        """The placement with its size-dependent defaults filled in."""
        out = self
        if self.kind == "torch" and self.dtype is None:
            out = replace(out, dtype="float16" if self.gpus else "float32")
        if self.kind in ("ivf", "ivfsq8", "ivfpq") and self.nlist is None:
            nlist = 2 ** max(0, round(math.log2(max(1.0, 4 * math.sqrt(num_docs)))))
            out = replace(out, nlist=int(max(1, min(nlist, num_docs // 39 or 1))))
        if self.kind == "ivfpq" and self.pq_m is None:
            out = replace(out, pq_m=_default_pq_m(dim))
        if self.kind == "ivfpq" and dim % int(out.pq_m):
            raise PlacementError(f"pq_m={out.pq_m} must divide the dimension {dim}")
        if self.kind in TRAINED_KINDS and self.train_rows is None:
            rows = max(64 * int(out.nlist or 0), 100_000)
            out = replace(out, train_rows=int(min(rows, num_docs)))
        return out

    @property
    def on_gpu(self) -> bool:
        return bool(self.gpus)

    def build_key(self) -> str:
        """What identifies a built faiss index of this placement on disk (search-time settings
        such as nprobe and ef_search excluded)."""
        parts = [self.kind]
        if self.kind in ("ivf", "ivfsq8", "ivfpq"):
            parts.append(f"nlist{self.nlist}")
        if self.kind == "ivfpq":
            parts.append(f"pq{self.pq_m}")
        if self.kind in ("hnsw", "hnswsq8"):
            parts += [f"m{self.m}", f"efc{self.ef_construction}"]
        if self.kind in TRAINED_KINDS:
            parts.append(f"train{self.train_rows}")
        return "_".join(parts)


def _default_pq_m(dim: int) -> int:
    for m in (dim // 8, dim // 4, dim // 2, dim):
        if m >= 1 and dim % m == 0 and m in (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56,
                                             64, 96, 128, 192, 256):
            return m
    return max(1, dim // 8) if dim % max(1, dim // 8) == 0 else dim


def parse_gpus(value: str) -> tuple[int, ...]:
    """``"0,1,2"`` or ``"0-3"`` (or a mix) → GPU numbers."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in str(value).replace(" ", "").split(","))):
        lo, dash, hi = part.partition("-")
        try:
            numbers = range(int(lo), int(hi) + 1) if dash else [int(lo)]
        except ValueError:
            raise PlacementError(f"gpus: {part!r} is not a GPU number or range like 0-3") from None
        out.extend(numbers)
    if not out:
        raise PlacementError("gpus: no GPU numbers given")
    if len(set(out)) != len(out):
        raise PlacementError(f"gpus: {value!r} names a GPU twice")
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# memory, computed before loading

def block_bytes() -> int:
    """The RAM one block of vectors may take while building, loading or streaming
    (``DEEPRETRIEVAL_DENSE_BLOCK_MB``, default 256)."""
    mb = settings.get_int("DEEPRETRIEVAL_DENSE_BLOCK_MB", 256)
    if mb < 1:
        raise settings.SettingError("DEEPRETRIEVAL_DENSE_BLOCK_MB must be >= 1")
    return mb * 1_000_000


def block_rows(dim: int, itemsize: int = 4) -> int:
    return max(1, block_bytes() // (int(dim) * itemsize))


@dataclass
class Plan:
    """Bytes a placement holds: ``ram`` in this process, ``gpu`` per GPU number. ``build_ram`` is
    the extra RAM while building (training sample, one block)."""

    placement: Placement
    num_docs: int
    dim: int
    ram: float
    gpu: dict[int, float] = field(default_factory=dict)
    build_ram: float = 0.0

    def line(self) -> str:
        where = f"{_gb(self.ram)} RAM"
        if self.gpu:
            each = sorted(set(round(v / GB, 2) for v in self.gpu.values()))
            where += (f" + {_gb(max(self.gpu.values()))} on each of {len(self.gpu)} GPU"
                      f"{'s' if len(self.gpu) > 1 else ''}" if len(each) <= 2 else
                      " + " + ", ".join(f"GPU {g}: {_gb(v)}" for g, v in self.gpu.items()))
        if self.build_ram:
            where += f" (+{_gb(self.build_ram)} while building)"
        return where


def _gb(value: float) -> str:
    return f"{value / GB:.2f} GB" if value < 10 * GB else f"{value / GB:.1f} GB"


def plan(placement: Placement, num_docs: int, dim: int, *, query_batch: int = 2560) -> Plan:
    """The memory of ``placement`` for ``num_docs`` × ``dim`` float32 vectors."""
    p = placement.resolved(num_docs, dim)
    n, d = int(num_docs), int(dim)
    block = min(block_bytes(), 4 * n * d)
    ram = 0.0
    gpu: dict[int, float] = {}
    build = 0.0
    if p.kind == "flat":
        if p.gpus:  # faiss-gpu: fp16 shards; the CPU side only ever holds one block
            gpu = {g: 2.0 * math.ceil(n / len(p.gpus)) * d + _faiss_gpu_temp() for g in p.gpus}
            ram = block
        else:
            ram = 4.0 * n * d + block
    elif p.kind == "stream":
        ram = block + torch_workspace(n, d, query_batch)
    elif p.kind == "torch":
        itemsize = {"float16": 2, "float32": 4, "sq8": 1}[str(p.dtype)]
        if p.dtype == "sq8":  # quantising a block makes two float32 temporaries of it
            block *= 3
        if p.gpus:
            rows_each = math.ceil(n / len(p.gpus))
            gpu = {g: float(itemsize * rows_each * d + torch_workspace(
                rows_each, d, query_batch, gpu=True, sq8=p.dtype == "sq8")) for g in p.gpus}
            ram = block
        else:
            ram = itemsize * n * d + torch_workspace(n, d, query_batch) + block
    else:
        nlist = int(p.nlist or 0)
        per_vec = {"sq8": d, "ivf": 4 * d + 8, "ivfsq8": d + 8, "ivfpq": int(p.pq_m or 0) + 8,
                   "hnsw": 4 * d + _HNSW_LINK_BYTES * p.m,
                   "hnswsq8": d + _HNSW_LINK_BYTES * p.m}[p.kind]
        fixed = 4.0 * nlist * d + (4.0 * 256 * d if p.kind == "ivfpq" else 0.0)
        held = per_vec * n + fixed
        if p.gpus:
            gpu = {g: held / len(p.gpus) + _faiss_gpu_temp() for g in p.gpus}
            ram = held + block  # built on the CPU, then copied
        else:
            ram = held + block
        if p.kind in TRAINED_KINDS:
            build = 4.0 * int(p.train_rows or 0) * d
    return Plan(p, n, d, ram, gpu, build)


def _faiss_gpu_temp() -> float:
    return 1.5 * GB  # StandardGpuResources' default scratch memory cap


def torch_workspace(rows: int, dim: int, query_batch: int, gpu: bool = False,
                    sq8: bool = False) -> float:
    """GPU/CPU bytes the torch search needs besides the vectors: one block of scores for a batch of
    queries (and its top-k), candidate rows rescored in float32, the queries."""
    qb = min(query_batch, TORCH_QUERY_BATCH)
    brows = min(rows, torch_block_rows(qb, gpu) if gpu else min(torch_block_rows(qb),
                                                                 block_rows(dim)))
    convert = 2.0 * min(rows, TORCH_GPU_SCORE_BYTES // (2 * dim)) * dim if gpu and sq8 else 0.0
    return 4.0 * qb * brows * 2 + 4.0 * qb * TORCH_CANDIDATES * dim + 4.0 * qb * dim + convert


#: queries per torch matmul (larger batches are split)
TORCH_QUERY_BATCH = 2560
#: candidates per query kept from each block before float32 rescoring (float16 / sq8)
TORCH_CANDIDATES = 64
#: bytes one block of torch scores may take on a GPU (on the CPU: DEEPRETRIEVAL_DENSE_BLOCK_MB)
TORCH_GPU_SCORE_BYTES = 1 << 30


def torch_block_rows(query_batch: int, gpu: bool = False) -> int:
    budget = TORCH_GPU_SCORE_BYTES if gpu else block_bytes()
    return max(1024, budget // (4 * max(1, query_batch)))


def available_ram() -> float:
    """Bytes this process may use: ``DEEPRETRIEVAL_DENSE_RAM_GB`` when set, else MemAvailable."""
    limit = settings.get_float("DEEPRETRIEVAL_DENSE_RAM_GB", 0.0)
    if limit < 0:
        raise settings.SettingError("DEEPRETRIEVAL_DENSE_RAM_GB must be >= 0")
    if limit > 0:
        return limit * GB
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def available_gpu(gpus: tuple[int, ...]) -> dict[int, float]:
    """Free bytes on each named GPU (torch's view); raises when a GPU is not there."""
    import torch
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = [g for g in gpus if g >= count]
    if missing:
        raise PlacementError(f"GPU {missing} requested but torch sees {count} GPU(s)")
    return {g: float(torch.cuda.mem_get_info(g)[0]) for g in gpus}


def check_fits(p: Plan, *, ram: float | None = None, gpu: dict[int, float] | None = None) -> None:
    """Raise :class:`PlacementError` with the numbers when ``p`` needs more than is free."""
    ram = available_ram() if ram is None else ram
    need_ram = p.ram + p.build_ram
    problems = []
    if need_ram > ram:
        problems.append(f"needs {_gb(need_ram)} of RAM, {_gb(ram)} available")
    if p.gpu:
        free = available_gpu(tuple(p.gpu)) if gpu is None else gpu
        for g, need in p.gpu.items():
            if need > free.get(g, 0.0):
                problems.append(f"needs {_gb(need)} on GPU {g}, {_gb(free.get(g, 0.0))} free")
    if problems:
        raise PlacementError(
            f"dense placement {p.placement.spec()} for {p.num_docs:,} × {p.dim} does not fit: "
            + "; ".join(problems) + ". Options for this index:\n" + plan_table(p.num_docs, p.dim))


def plan_table(num_docs: int, dim: int, gpus: tuple[int, ...] = (0,)) -> str:
    """Every placement's memory for this index and, for reference, for wiki-18 × 768."""
    rows = ["| placement | exact | this index (" + f"{num_docs:,} × {dim}) | wiki-18 "
            f"({WIKI18[0]:,} × {WIKI18[1]}) |", "|---|---|---|---|"]
    for placement in reference_placements(gpus):
        try:
            here = plan(placement, num_docs, dim).line()
        except PlacementError as exc:
            here = f"n/a ({exc})"
        wiki = plan(placement, *WIKI18).line()
        exact = ("yes" if placement.kind in EXACT_KINDS or (placement.kind == "torch" and
                                                             placement.dtype == "float32")
                 else "fp16 vectors" if placement.kind == "torch" and placement.dtype != "sq8"
                 else "no")
        rows.append(f"| `{placement.spec()}` | {exact} | {here} | {wiki} |")
    return "\n".join(rows)


def reference_placements(gpus: tuple[int, ...] = (0,)) -> list[Placement]:
    all_gpus = tuple(gpus) if gpus else (0,)
    out = [Placement("flat"), Placement("stream"), Placement("torch", dtype="float32"),
           Placement("sq8"), Placement("ivf"), Placement("ivfsq8"), Placement("ivfpq"),
           Placement("hnsw"), Placement("hnswsq8"),
           Placement("torch", gpus=(all_gpus[0],), dtype="float16"),
           Placement("torch", gpus=(all_gpus[0],), dtype="sq8")]
    if len(all_gpus) > 1:
        out.append(Placement("torch", gpus=all_gpus, dtype="float16"))
    out.append(Placement("ivfpq", gpus=(all_gpus[0],)))
    return out


# ---------------------------------------------------------------------------------------------
# reading vectors in blocks, without a memory map

class VectorSource:
    """Rows of a float32 matrix, read block by block: an ``.npy`` file (``pread`` into one reused
    buffer) or an in-memory array."""

    def __init__(self, array: np.ndarray | None = None, path: str | os.PathLike | None = None,
                 layout: tuple[tuple[int, int], int] | None = None):
        if (array is None) == (path is None):
            raise ValueError("give an array or a path")
        self.array = array
        self.path = Path(path) if path is not None else None
        self._fd: int | None = None
        if self.array is not None:
            if self.array.ndim != 2:
                raise ValueError(f"vectors must be 2-D, got shape {self.array.shape}")
            self.shape = (int(self.array.shape[0]), int(self.array.shape[1]))
            self.offset = 0
        else:
            self.shape, self.offset = layout or npy_layout(self.path)

    @property
    def num_rows(self) -> int:
        return self.shape[0]

    @property
    def dim(self) -> int:
        return self.shape[1]

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``start:stop`` as a float32 array (into ``out`` when given)."""
        stop = min(stop, self.num_rows)
        n = max(0, stop - start)
        if out is None:
            out = np.empty((n, self.dim), dtype=np.float32)
        else:
            out = out[:n]
        if self.array is not None:
            out[...] = self.array[start:stop]
            return out
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        view = memoryview(out.reshape(-1).view(np.uint8))
        pos, want, done = self.offset + 4 * start * self.dim, out.nbytes, 0
        while done < want:
            got = os.preadv(self._fd, [view[done:]], pos + done)
            if got <= 0:
                raise OSError(f"{self.path}: file ends before row {stop}")
            done += got
        return out

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """Rows at arbitrary positions (a training sample)."""
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty((len(positions), self.dim), dtype=np.float32)
        for i, p in enumerate(positions.tolist()):
            self.read(p, p + 1, out[i:i + 1])
        return out

    def blocks(self, rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, block)`` pairs; the block is a reused buffer, valid until the next one."""
        rows = rows or block_rows(self.dim)
        if self.array is not None:
            for start in range(0, self.num_rows, rows):
                yield start, np.ascontiguousarray(self.array[start:start + rows], dtype=np.float32)
            return
        buf = np.empty((min(rows, max(1, self.num_rows)), self.dim), dtype=np.float32)
        for start in range(0, self.num_rows, rows):
            yield start, self.read(start, start + rows, buf)

    def sample(self, count: int, seed: int = 0) -> np.ndarray:
        count = min(int(count), self.num_rows)
        if count >= self.num_rows:
            return self.read(0, self.num_rows)
        rng = np.random.default_rng(seed)
        return self.rows(np.sort(rng.choice(self.num_rows, size=count, replace=False)))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown order
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


def npy_layout(path: str | os.PathLike) -> tuple[tuple[int, int], int]:
    """``((rows, dim), data offset)`` of a 2-D little-endian float32 C-order ``.npy`` file."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                  else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = reader(f)
        offset = f.tell()
    if len(shape) != 2 or fortran or np.dtype(dtype) != np.dtype("<f4"):
        raise ValueError(f"{path}: expected a 2-D float32 C-order array, got shape {shape}, "
                         f"dtype {dtype}, fortran_order={fortran}")
    return (int(shape[0]), int(shape[1])), offset


class VectorWriter:
    """Writes rows of a float32 ``.npy`` file of a known shape with ``pwrite`` (no memory map, so
    the written rows do not stay in the process's RSS). ``resume=True`` reopens an existing file
    of that shape."""

    def __init__(self, path: str | os.PathLike, shape: tuple[int, int], *, resume: bool = False):
        self.path = Path(path)
        self.shape = (int(shape[0]), int(shape[1]))
        if resume:
            found, self.offset = npy_layout(self.path)
            if found != self.shape:
                raise ValueError(f"{self.path} holds {found}, expected {self.shape}")
        else:
            with open(self.path, "wb") as f:
                np.lib.format.write_array_header_1_0(
                    f, {"descr": "<f4", "fortran_order": False, "shape": self.shape})
                self.offset = f.tell()
                f.truncate(self.offset + 4 * self.shape[0] * self.shape[1])
        self._fd = os.open(self.path, os.O_RDWR)

    def write(self, start: int, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=np.float32)
        if block.ndim != 2 or block.shape[1] != self.shape[1] or start + len(block) > self.shape[0]:
            raise ValueError(f"block {block.shape} at row {start} does not fit {self.shape}")
        view = memoryview(block.reshape(-1).view(np.uint8))
        pos, done = self.offset + 4 * start * self.shape[1], 0
        while done < len(view):
            done += os.pwrite(self._fd, view[done:], pos + done)

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def faiss_flat_layout(path: str | os.PathLike) -> tuple[tuple[int, int], int]:
    """``((rows, dim), data offset)`` of a faiss ``IndexFlat`` file (``faiss.write_index``; e.g.
    Search-R1's ``e5_Flat.index``): fourcc ``IxFI``/``IxF2``/``IxFl``, the index header (d int32,
    ntotal int64, two int64, is_trained byte, metric int32, metric_arg float32 for metrics > 1),
    then the float count (uint64) and the float32 rows."""
    import struct
    with open(path, "rb") as f:
        fourcc = f.read(4)
        if fourcc not in (b"IxFI", b"IxF2", b"IxFl"):
            raise ValueError(f"{path} is not a faiss flat index file (starts with {fourcc!r})")
        dim, ntotal, _, _, _, metric = struct.unpack("<iqqq?i", f.read(33))
        if metric > 1:
            f.read(4)
        (count,) = struct.unpack("<Q", f.read(8))
        offset = f.tell()
    if count != ntotal * dim or dim < 1:
        raise ValueError(f"{path}: header says {ntotal} × {dim} but holds {count} floats")
    size = os.path.getsize(path)
    if size < offset + 4 * count:
        raise ValueError(f"{path} is truncated: {size} bytes, {offset + 4 * count} expected")
    return (int(ntotal), int(dim)), offset


# ---------------------------------------------------------------------------------------------
# exact search in torch (CPU or GPUs)

class TorchExact:
    """Exact inner-product top-k by matmul + top-k in torch, over rows resident on one or more
    devices (shards), or streamed from a :class:`VectorSource` per search (``stream``).

    float16 and sq8 vectors: each block keeps :data:`TORCH_CANDIDATES` per query by the block's
    own scores, which are then recomputed in float32 from the stored (rounded) vectors; float32:
    the block scores are final. Ties are broken by position, so results are deterministic."""

    def __init__(self, source: VectorSource, *, devices: list[str], dtype: str = "float32",
                 stream: bool = False, progress=None):
        import torch
        if dtype not in TORCH_DTYPES:
            raise PlacementError(f"unknown dtype {dtype!r} (known: {list(TORCH_DTYPES)})")
        self.torch = torch
        self.source = source
        self.dtype = dtype
        self.stream = stream
        self.devices = [torch.device(d) for d in devices]
        self.dim = source.dim
        self.num_rows = source.num_rows
        self._lock = threading.Lock()
        # sq8: per-dimension min and step from a sample (faiss QT_8bit: uniform per dimension)
        self.vmin = self.vstep = None
        if dtype == "sq8":
            sample = source.sample(min(source.num_rows, 100_000))
            lo, hi = sample.min(axis=0), sample.max(axis=0)
            self.vmin = lo.astype(np.float32)
            self.vstep = np.maximum(hi - lo, 1e-12).astype(np.float32) / 255.0
        self.shards: list[tuple[int, Any]] = []  # (first row, tensor on its device)
        if not stream:
            self._load(progress)

    # ---- holding ------------------------------------------------------------------------------
    def _store(self, block: np.ndarray, target) -> None:
        """Copy a float32 block into ``target`` (a slice of a shard), converting on the way."""
        if self.dtype == "sq8":
            block = np.clip(np.rint((block - self.vmin) / self.vstep), 0, 255).astype(np.uint8)
        target.copy_(self.torch.from_numpy(block))

    def _load(self, progress) -> None:
        torch = self.torch
        n, d = self.num_rows, self.dim
        per = math.ceil(n / len(self.devices)) if n else 0
        itemdtype = {"float16": torch.float16, "float32": torch.float32, "sq8": torch.uint8}[self.dtype]
        starts = list(range(0, n, per)) if per else [0]
        for i, device in enumerate(self.devices[:len(starts)]):
            lo, hi = starts[i], min(n, starts[i] + per)
            self.shards.append((lo, torch.empty((hi - lo, d), dtype=itemdtype, device=device)))
        rows = block_rows(d)
        buf = np.empty((min(rows, max(1, n)), d), dtype=np.float32)
        for lo, shard in self.shards:
            for start in range(lo, lo + shard.shape[0], rows):
                stop = min(lo + shard.shape[0], start + rows)
                block = self.source.read(start, stop, buf)
                self._store(block, shard[start - lo:stop - lo])
                if progress is not None:
                    progress(stop - start)

    def memory_bytes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for _, shard in self.shards:
            key = str(shard.device)
            out[key] = out.get(key, 0) + shard.numel() * shard.element_size()
        return out

    # ---- searching ------------------------------------------------------------------------------
    def _block_candidates(self, q, block, k: int):
        """(scores float32, positions within block) of the best candidates of one block."""
        torch = self.torch
        rows = block.shape[0]
        if self.dtype == "float32":
            scores = q @ block.T
            c = min(k, rows)
            vals, idx = torch.topk(scores, c, dim=1)
            return vals, idx
        if self.dtype == "float16":
            qh = q.to(torch.float16)
            scores = qh @ block.T
            c = min(rows, max(k, TORCH_CANDIDATES))
            _, idx = torch.topk(scores, c, dim=1)
            cand = block[idx].to(torch.float32)              # (nq, c, d)
        else:  # sq8: q·x = q·vmin + (q ⊙ step)·codes
            qs = q * self._vstep_t(q.device)
            half = qs.dtype if q.device.type == "cpu" else torch.float16
            scores = qs.to(half) @ block.T.to(half)
            c = min(rows, max(k, TORCH_CANDIDATES))
            _, idx = torch.topk(scores, c, dim=1)
            cand = block[idx].to(torch.float32) * self._vstep_t(q.device) + self._vmin_t(q.device)
        exact = torch.bmm(cand, q.unsqueeze(2)).squeeze(2)   # float32
        c2 = min(k, c)
        vals, order = torch.topk(exact, c2, dim=1)
        return vals, torch.gather(idx, 1, order)

    def _vstep_t(self, device):
        return self.torch.from_numpy(self.vstep).to(device)

    def _vmin_t(self, device):
        return self.torch.from_numpy(self.vmin).to(device)

    def _search_batch(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        nq = vectors.shape[0]
        on_gpu = self.devices[0].type == "cuda"
        brows = torch_block_rows(nq, on_gpu) if on_gpu else min(torch_block_rows(nq),
                                                                block_rows(self.dim))
        if self.dtype == "sq8" and on_gpu:  # each block of codes is converted to float16
            brows = min(brows, TORCH_GPU_SCORE_BYTES // (2 * self.dim))
        all_vals, all_pos = [], []
        pending = []
        with torch.inference_mode():
            if self.stream:
                q = torch.from_numpy(vectors)
                rows = brows
                buf = np.empty((min(rows, max(1, self.num_rows)), self.dim), dtype=np.float32)
                for start in range(0, self.num_rows, rows):
                    block = torch.from_numpy(self.source.read(start, start + rows, buf))
                    vals, idx = self._block_candidates(q, block, k)
                    all_vals.append(vals)
                    all_pos.append(idx + start)
                    vals, pos = _merge(torch, all_vals, all_pos, k)
                    all_vals, all_pos = [vals], [pos]
            else:
                for lo, shard in self.shards:  # CUDA calls are asynchronous: devices overlap
                    q = torch.from_numpy(vectors).to(shard.device, non_blocking=True)
                    vals_d, pos_d = [], []
                    for start in range(0, shard.shape[0], brows):
                        vals, idx = self._block_candidates(q, shard[start:start + brows], k)
                        vals_d.append(vals)
                        pos_d.append(idx + (lo + start))
                        if len(vals_d) > 8:
                            v, p = _merge(torch, vals_d, pos_d, k)
                            vals_d, pos_d = [v], [p]
                    pending.append(_merge(torch, vals_d, pos_d, k))
                for vals, pos in pending:
                    all_vals.append(vals.cpu())
                    all_pos.append(pos.cpu())
        vals = torch.cat(all_vals, dim=1).numpy()
        pos = torch.cat(all_pos, dim=1).numpy()
        return _final_topk(vals, pos, k)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores float32 (n, k), positions int64 (n, k)), best first, -1 where fewer rows."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        k_eff = min(int(k), self.num_rows)
        out_s = np.full((len(vectors), k), -np.inf, dtype=np.float32)
        out_p = np.full((len(vectors), k), -1, dtype=np.int64)
        if not len(vectors) or k_eff < 1:
            return out_s, out_p
        with self._lock:
            for s in range(0, len(vectors), TORCH_QUERY_BATCH):
                scores, pos = self._search_batch(vectors[s:s + TORCH_QUERY_BATCH], k_eff)
                out_s[s:s + len(scores), :k_eff] = scores
                out_p[s:s + len(scores), :k_eff] = pos
        return out_s, out_p


def _merge(torch, vals: list, pos: list, k: int):
    v = torch.cat(vals, dim=1)
    p = torch.cat(pos, dim=1)
    c = min(k, v.shape[1])
    top, order = torch.topk(v, c, dim=1)
    return top, torch.gather(p, 1, order)


def _final_topk(vals: np.ndarray, pos: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` per row, ties broken by lower position."""
    order = np.lexsort((pos, -vals), axis=1)[:, :k]
    return (np.take_along_axis(vals, order, axis=1).astype(np.float32),
            np.take_along_axis(pos, order, axis=1).astype(np.int64))


# ---------------------------------------------------------------------------------------------
# faiss placements

FACTORY = {"flat": "Flat", "sq8": "SQ8", "ivf": "IVF{nlist},Flat", "ivfsq8": "IVF{nlist},SQ8",
           "ivfpq": "IVF{nlist},PQ{pq_m}", "hnsw": "HNSW{m}", "hnswsq8": "HNSW{m},SQ8"}


def build_faiss_index(placement: Placement, source: VectorSource, progress=None):
    """A CPU faiss index of ``placement`` (resolved) over ``source``, trained on a sample and
    filled block by block."""
    import faiss
    p = placement
    d = source.dim
    index = faiss.index_factory(d, FACTORY[p.kind].format(nlist=p.nlist, pq_m=p.pq_m, m=p.m),
                                faiss.METRIC_INNER_PRODUCT)
    if p.kind in ("hnsw", "hnswsq8"):
        index.hnsw.efConstruction = int(p.ef_construction)
    if not index.is_trained:
        sample = source.sample(int(p.train_rows or source.num_rows))
        index.train(sample)
        del sample
    for _start, block in source.blocks():
        index.add(block)
        if progress is not None:
            progress(len(block))
    apply_search_params(index, p)
    return index


def apply_search_params(index, p: Placement) -> None:
    import faiss
    if p.kind in ("ivf", "ivfsq8", "ivfpq"):
        faiss.extract_index_ivf(index).nprobe = int(p.nprobe)
    if p.kind in ("hnsw", "hnswsq8"):
        faiss.downcast_index(index).hnsw.efSearch = int(p.ef_search)


def faiss_to_gpus(index, p: Placement, source: VectorSource | None = None, progress=None):
    """faiss-gpu (the ``gpu`` extra): flat as float16 shards filled block by block; trained
    kinds copied from the CPU index, sharded in float16 over ``p.gpus``. Not run on this
    project's CPU machines."""
    import faiss
    if not hasattr(faiss, "StandardGpuResources"):
        raise PlacementError("faiss here has no GPU support: pip install 'deepretrieval[gpu]' "
                             "(faiss-gpu), or use the torch placement (torch:gpus=...)")
    if p.kind == "flat":
        if source is None:
            raise ValueError("the faiss-gpu flat placement is filled from the vectors' source")
        shards = faiss.IndexShards(source.dim, True, False)
        resources = []
        per = math.ceil(source.num_rows / len(p.gpus))
        parts = []
        for g in p.gpus:
            res = faiss.StandardGpuResources()
            cfg = faiss.GpuIndexFlatConfig()
            cfg.device, cfg.useFloat16 = int(g), True
            parts.append(faiss.GpuIndexFlatIP(res, source.dim, cfg))
            resources.append(res)
        for start, block in source.blocks():
            for i, part in enumerate(parts):  # shard i holds rows [i·per, (i+1)·per)
                a, b = max(i * per, start), min((i + 1) * per, start + len(block))
                if a < b:
                    part.add(block[a - start:b - start])
            if progress is not None:
                progress(len(block))
        for part in parts:
            shards.add_shard(part)
        shards._keep = (parts, resources)  # noqa: SLF001 - keep the GPU objects alive
        return shards
    co = faiss.GpuMultipleClonerOptions()
    co.shard, co.useFloat16 = True, True
    return faiss.index_cpu_to_gpus_list(index, co=co, gpus=list(p.gpus))


def rerank_exact(source: VectorSource, vectors: np.ndarray, positions: np.ndarray,
                 k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rescore candidate positions with the float32 vectors read from ``source`` (one ``pread``
    per distinct row) and keep the best ``k`` per query."""
    valid = positions >= 0
    uniq = np.unique(positions[valid])
    rows = source.rows(uniq) if len(uniq) else np.zeros((0, source.dim), dtype=np.float32)
    idx = np.searchsorted(uniq, np.where(valid, positions, uniq[0] if len(uniq) else 0))
    scores = np.einsum("qcd,qd->qc", rows[idx] if len(uniq) else
                       np.zeros(positions.shape + (source.dim,), np.float32), vectors)
    scores = np.where(valid, scores, -np.inf).astype(np.float32)
    pos = np.where(valid, positions, np.iinfo(np.int64).max)
    top_s, top_p = _final_topk(scores, pos, k)
    top_p[top_p == np.iinfo(np.int64).max] = -1
    return top_s, top_p


def recall_at(k: int, exact: np.ndarray, approx: np.ndarray) -> float:
    """Mean over queries of |top-k(approx) ∩ top-k(exact)| / k (positions; -1 ignored)."""
    exact, approx = np.asarray(exact)[:, :k], np.asarray(approx)[:, :k]
    hits = 0
    for e, a in zip(exact.tolist(), approx.tolist()):
        hits += len(set(x for x in e if x >= 0) & set(a))
    denom = sum(len([x for x in e if x >= 0]) for e in exact.tolist())
    return hits / denom if denom else 1.0
