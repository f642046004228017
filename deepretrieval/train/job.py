"""A training run's common part: the job (task, rows, run folder, indexes, service — the flags
every engine shares), where its rows come from, and which indexes its service needs. The engines
themselves are registered in :mod:`deepretrieval.train.trainers`."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from deepretrieval.catalog import BUILTIN_INDEXES, bundled_rows, index_available
from deepretrieval.core import settings
from deepretrieval.data import search_r1
from deepretrieval.data.rows import write_parquet
from deepretrieval.train.export import checkpoint_kind, export_checkpoint


@dataclass
class TrainJob:
    """What every engine's run is given (``deepretrieval train``'s common flags)."""

    task: str = field(metadata={"help": "task name (deepretrieval tasks)"})
    model: str | None = field(default=None, metadata={
        "help": "policy model folder or hub id; the engine's default"})
    init_from: str | None = field(default=None, metadata={
        "metavar": "CHECKPOINT",
        "help": "transfer training: start from another run's checkpoint (verl, TRL or HF folder; "
                "exported to <out>/init_model first)"})
    data: str | None = field(default=None, metadata={
        "help": "folder with train.parquet and test.parquet (or dev/val.parquet; default: "
                "data/<task> if present, else the bundled rows: SciFact, pubmed, closed world)"})
    out: str | None = field(default=None, metadata={
        "help": "run folder (default: runs/<task>-<engine>)"})
    index: list[str] = field(default_factory=list, metadata={
        "metavar": "NAME[=PATH]",
        "help": "index(es) the service serves (repeatable; default: the task's index)"})
    search_url: str | None = field(default=None, metadata={
        "help": "use a running retrieval service instead of starting one"})
    no_service: bool = field(default=False, metadata={
        "help": "search in this process instead of through the service (trl, exsearch)"})
    service_host: str = field(default="127.0.0.1", metadata={
        "help": "interface the started service binds (0.0.0.0 for multi-node verl)"})
    dry_run: bool = field(default=False, metadata={
        "help": "print the resolved command/config, start and stop the service, do not train"})
    limit: int | None = field(default=None, metadata={
        "help": "use only the first N train rows (trl, exsearch)"})
    overrides: list[str] = field(default_factory=list)   # KEY=VALUE: verl hydra / GRPOConfig fields
    verbose: bool = False              # log every search request (httpx) too


def data_folder_files(folder: Path) -> tuple[Path, Path] | None:
    """(train, validation) parquet of a rows folder: train.parquet and test.parquet (else
    dev.parquet or val.parquet); None when the folder has no rows at all. A folder that does not
    exist, or holds only some of the splits, is an error that says what is there and how to
    make the rest."""
    if not folder.is_dir():
        raise FileNotFoundError(f"--data {folder}: no such folder (write rows with "
                                f"`deepretrieval prepare ...`)")
    train = folder / "train.parquet"
    evals = [folder / f"{s}.parquet" for s in ("test", "dev", "val") if (folder / f"{s}.parquet").is_file()]
    if train.is_file() and evals:
        return train, evals[0]
    present = sorted(p.name for p in folder.glob("*.parquet"))
    if not present:
        return None
    if not train.is_file():
        raise FileNotFoundError(
            f"{folder} has {', '.join(present)} but no train.parquet. Make a train split: "
            f"`deepretrieval prepare beir ... --test-fraction 0.2` (or --split-by FIELD) splits "
            f"one qrels file into train and test; `prepare sql` splits the questions without a "
            f"'split' (--test-fraction); or give --qrels train=PATH test=PATH")
    raise FileNotFoundError(f"{folder} has train.parquet but no test.parquet (nor dev/val) to "
                            f"validate on; `deepretrieval prepare ... --test-fraction 0.2` writes both")


def rows_files(task_name: str, data: str | None, out: Path, dry_run: bool) -> tuple[Path, Path]:
    """train/test parquet of the task: --data, data/<task>, or the bundled BEIR rows."""
    folder = Path(data) if data else Path("data") / task_name
    found = data_folder_files(folder) if data or folder.is_dir() else None
    if found:
        for path in found:  # Search-R1's own rows would be scored as other tasks: refuse them
            search_r1.check_file(path)
        return found[0].resolve(), found[1].resolve()
    if data:
        raise FileNotFoundError(f"{folder} has no train.parquet/test.parquet; write them with "
                                f"`deepretrieval prepare ...`")
    try:
        rows = {split: bundled_rows(task_name, split) for split in ("train", "test")}
    except (FileNotFoundError, KeyError, ValueError) as exc:
        if dry_run:
            print(f"warning: no rows for {task_name} yet ({exc}); prepare them with "
                  f"`deepretrieval prepare ...` into {folder}", file=sys.stderr)
            return (folder / "train.parquet").resolve(), (folder / "test.parquet").resolve()
        raise FileNotFoundError(f"no rows for task {task_name!r}: pass --data DIR (train.parquet, "
                                f"test.parquet), written by `deepretrieval prepare ...`") from exc
    target = out / "data"
    return (write_parquet(rows["train"], target / "train.parquet").resolve(),
            write_parquet(rows["test"], target / "test.parquet").resolve())


def default_indexes(task) -> list[str]:
    """The indexes a task's searches need: its index, or — for per-database tasks such as Spider —
    every registered ``<index>/<name>``."""
    if task.index in BUILTIN_INDEXES or (settings.index_dir() / task.index / "meta.json").exists():
        return [task.index]
    prefixed = sorted(name for name in BUILTIN_INDEXES if name.startswith(task.index + "/"))
    prefixed += sorted(f"{task.index}/{p.name}" for p in (settings.index_dir() / task.index).glob("*")
                       if p.is_dir() and f"{task.index}/{p.name}" not in prefixed) \
        if (settings.index_dir() / task.index).is_dir() else []
    return prefixed or [task.index]


def setup_hint(task) -> str:
    """How to get a task's index and rows when they are not here (no bundled data)."""
    family, index = task.family.name, task.index
    if family == "beir":
        base = index.removesuffix("_dense")
        dense = " --dense MODEL" if index.endswith("_dense") else ""
        return (f"build it and the rows from the dataset's BEIR files: `deepretrieval prepare beir "
                f"--corpus corpus.jsonl --queries queries.jsonl --qrels train=qrels/train.tsv "
                f"test=qrels/test.tsv --name {base}{dense}`, then --data data/{base}. The original's "
                f"preprocessed rows (`python download_datasets.py --categories local_index_search "
                f"--datasets {base}`) work as --data too, but still need the index")
    if family == "evidence":
        return (f"build a passage index: `deepretrieval index --corpus passages.jsonl --name {index}` "
                f"(e.g. the DPR Wikipedia passages), then rows: `deepretrieval prepare {task.name} "
                f"--index {index} --input questions.jsonl`")
    if family == "sql":
        return f"download the databases and write rows: `deepretrieval prepare {index} --{index}-dir DIR`"
    return "build it with `deepretrieval index` / `deepretrieval prepare ...`, or pass --index NAME=PATH"


def check_indexes(task, indexes: list[str]) -> None:
    """Fail before anything starts when an index the run needs is not here (NAME=PATH specs are
    the service's to check)."""
    missing = [name for name in indexes if "=" not in name and not index_available(name)]
    if missing:
        raise FileNotFoundError(f"task {task.name!r} needs index {', '.join(map(repr, missing))}, "
                                f"which is not built here: {setup_hint(task)}")


def key_values(items: list[str]) -> dict:
    """``KEY=VALUE`` overrides as a dict (values parsed as JSON where they are JSON)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def init_model(job: TrainJob, model: str, out: Path) -> str:
    """The policy to start from: ``model``, or ``--init-from``'s checkpoint (exported to
    ``<out>/init_model`` unless it is a Hugging Face folder already)."""
    if not job.init_from:
        return model
    kind = checkpoint_kind(job.init_from)
    if kind == "hf":
        return str(Path(job.init_from).resolve())
    target = out / "init_model"
    if job.dry_run:
        print(f"would export {kind} checkpoint {job.init_from} → {target}")
        return str(target.resolve())
    print(f"transfer: exporting {kind} checkpoint {job.init_from} → {target}", flush=True)
    return str(export_checkpoint(job.init_from, target).resolve())
