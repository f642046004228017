"""What the bring-your-own preparers share (``deepretrieval prepare beir | sql | pico``:
:mod:`deepretrieval.data.byo_beir`, :mod:`deepretrieval.data.byo_sql`,
:mod:`deepretrieval.data.byo_pico`): input files checked before anything is written (errors name
the file and line or item), items read from a JSON list or JSONL, stable hash-based train/test
splits, and outputs staged beside their destinations and renamed into place only when everything
succeeded, so a failure leaves nothing behind.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deepretrieval.core.beir_files import FormatError

__all__ = ["SPLIT_NAMES", "Staged", "assign_splits", "check_name", "check_test_fraction",
           "explicit_split", "field_value", "load_items", "need_file", "split_groups"]

SPLIT_NAMES = ("train", "test", "val", "dev")


class Staged:
    """Outputs written to temp paths beside their destinations, renamed into place on commit."""

    def __init__(self) -> None:
        self.items: list[tuple[Path, Path]] = []  # (temp, final)

    def path(self, final: str | os.PathLike) -> Path:
        final = Path(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{final.name}.staged-{uuid.uuid4().hex[:8]}"
        self.items.append((tmp, final))
        return tmp

    def commit(self) -> None:
        for tmp, final in self.items:
            if final.is_dir() and not final.is_symlink():
                old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
        self.items.clear()

    def abort(self) -> None:
        for tmp, _ in self.items:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        self.items.clear()

    def __enter__(self) -> "Staged":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.commit()


def need_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    return path


def check_name(name: str) -> None:
    if not name or not all(c.isalnum() or c in "_-." for c in name) or name.startswith("."):
        raise ValueError(f"--name {name!r}: use letters, digits, '_', '-' or '.'")


def load_items(path: Path) -> list[tuple[Any, str]]:
    """A JSON list, or JSONL: [(item, location)] where location is ``file:line`` / ``file item N``."""
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FormatError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
        return [(item, f"{path} item {i}") for i, item in enumerate(data)]
    items = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append((json.loads(line), f"{path}:{lineno}"))
        except json.JSONDecodeError as exc:
            raise FormatError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
    return items


def explicit_split(item: Mapping[str, Any], where: str) -> str | None:
    """The item's own ``split`` (train, test, val or dev), None when it has none."""
    split = item.get("split")
    if split is None:
        return None
    if split not in SPLIT_NAMES:
        raise FormatError(f"{where}: split {split!r} must be {', '.join(SPLIT_NAMES[:-1])} or "
                          f"{SPLIT_NAMES[-1]}")
    return split


def assign_splits(pending: Sequence[tuple[str, str]], test_fraction: float,
                   split_by: str) -> dict[str, str]:
    """{where: split} for the items without their own split; ``pending`` is [(where, group)]."""
    if not pending:
        return {}
    try:
        assignment = split_groups([g for _, g in pending], test_fraction)
    except ValueError as exc:
        raise FormatError(f"{len(pending)} item(s) without a 'split': {exc} (--split-by "
                          f"{split_by!r})") from None
    return {where: assignment[group] for where, group in pending}


def _hash01(key: str) -> float:
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def check_test_fraction(test_fraction: float) -> float:
    if not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise ValueError(f"--test-fraction {test_fraction!r}: expected a number between 0 and 1")
    return float(test_fraction)


def split_groups(groups: Sequence[str], test_fraction: float) -> dict[str, str]:
    """A stable train/test split of the distinct ``groups``: ordered by a hash of the value, the
    first ``round(test_fraction * n)`` (at least 1, at most n - 1) go to ``test``, the rest to
    ``train``. Every item of a group lands in the same split; the same input gives the same
    split on every machine."""
    test_fraction = check_test_fraction(test_fraction)
    distinct = sorted(set(groups), key=lambda g: (_hash01(g), g))
    if len(distinct) < 2:
        raise ValueError(f"cannot split {len(distinct)} group(s) into train and test; "
                         f"--split-by must give at least two different values")
    n_test = min(max(1, round(test_fraction * len(distinct))), len(distinct) - 1)
    return {g: ("test" if i < n_test else "train") for i, g in enumerate(distinct)}


def field_value(obj: Mapping[str, Any], field: str, where: str) -> str:
    """``field`` of an item (dotted for nested objects: ``metadata.topic``) as a string."""
    value: Any = obj
    for part in field.split("."):
        if not isinstance(value, Mapping) or part not in value or value[part] is None:
            raise FormatError(f"{where}: no field {field!r} (--split-by)")
        value = value[part]
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)
