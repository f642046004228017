"""Replay recorded original rewards under the ``paper`` profile, case by case
(``deepretrieval paper-check``, :mod:`deepretrieval.cli.paper`).

A case file is JSONL in the format of ``tests/data/original_rewards/`` (see its README): every
case carries the inputs of one call of an original ``compute_score``, the content of the fake
back-end it ran against, and the score the original returned (``null`` where it raised). The
search results are rebuilt from the case alone (:class:`CaseBackend`); SQL runs on a private copy
of the case's database.
"""
from __future__ import annotations

import gzip
import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepretrieval.core.bundled import bundled_path
from deepretrieval.core.results import SearchResult
from deepretrieval.paper.engine import PaperResult, paper_score
from deepretrieval.paper.modules import PAPER_MODULES
from deepretrieval.paper.sql import SQLiteCopy, run_sql_on_copy
from deepretrieval.tasks.original import paper_module_name

#: Spider databases bundled with the package (``<db_id>/<db_id>.sqlite``).
BUNDLED_DB_ROOT = bundled_path("spider", "database")
TOLERANCE = 1e-9


def expand_list(value: Any, kind: str) -> list:
    """A stub list, written out or in the compact form ``{"length", "at", filler}``."""
    if isinstance(value, list):
        return value
    if not isinstance(value, Mapping) or "length" not in value:
        raise ValueError(f"bad compact {kind} list: {str(value)[:80]}")
    at = value.get("at", {})
    if kind == "ranked_ids":
        prefix = value["filler_prefix"]
        return [at.get(str(r), f"{prefix}{r}") for r in range(1, int(value["length"]) + 1)]
    return [at.get(str(r), value["filler"]) for r in range(1, int(value["length"]) + 1)]


class CaseBackend:
    """The case's fake back-end as a :class:`~deepretrieval.core.results.Backend`: whatever the
    query, the first ``k`` entries (k < 0: all) of its ``ranked_ids``, or of its ``passages`` when
    texts are asked for. ``calls`` records each depth asked for."""

    name = "recorded case"

    def __init__(self, case: Mapping[str, Any]):
        self.stub = case.get("search_stub") or {}
        self.calls: list[int] = []

    def info(self) -> dict[str, Any]:
        return {"type": "recorded case", "stub": sorted(self.stub)}

    def search(self, queries: list, k: int, *, return_text: bool = False,
               options: dict[str, Any] | None = None) -> list[SearchResult]:
        out = []
        kind = "passages" if return_text else "ranked_ids"
        for _ in queries:
            items = expand_list(self.stub[kind], kind)
            self.calls.append(k)
            items = items if k < 0 else items[:k]
            if return_text:
                out.append(SearchResult(ids=[str(r) for r in range(1, len(items) + 1)], texts=items))
            else:
                out.append(SearchResult(ids=items))
        return out


def load_cases(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    cases = []
    with opener(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                case = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: not JSON ({exc})") from None
            for key in ("case_id", "family", "original_module", "data_source", "solution_str",
                        "ground_truth", "original_score"):
                if key not in case:
                    raise ValueError(f"{path}:{lineno}: case has no {key!r}")
            cases.append(case)
    return cases


@dataclass
class CaseOutcome:
    case_id: str
    family: str
    module: str
    expected: float | None
    got: float | None
    raised_in_original: bool
    rule: str | None = None
    error: str | None = None      # we raised (never acceptable)
    dispatch_ok: bool = True
    depth_ok: bool = True         # our first search asked for the case's k_used

    @property
    def agrees(self) -> bool:
        if not self.depth_ok:
            return False
        if self.error is not None or self.got is None or not math.isfinite(self.got):
            return False
        if self.raised_in_original:
            return self.rule is not None  # a defined score, by a documented rule
        return abs(self.got - self.expected) <= TOLERANCE * max(1.0, abs(self.expected))


def _ground_truth(case: Mapping[str, Any]) -> dict:
    gt = dict(case["ground_truth"]) if isinstance(case["ground_truth"], Mapping) else case["ground_truth"]
    for key in case.get("ground_truth_numpy_fields") or []:
        gt[key] = np.array(gt[key], dtype=object)
    return gt


def replay_case(case: Mapping[str, Any], db_root: Path = BUNDLED_DB_ROOT) -> CaseOutcome:
    module = PAPER_MODULES.get(case["original_module"])
    expected = case["original_score"]
    base = dict(case_id=case["case_id"], family=case["family"], module=case["original_module"],
                expected=expected, raised_in_original=expected is None)
    if module is None:
        return CaseOutcome(**base, got=None, error=f"no paper module {case['original_module']!r}")
    dispatch = case.get("main_ppo_dispatch")
    ours = paper_module_name(case["data_source"])
    dispatch_ok = dispatch in (None, "NotImplementedError") or ours == dispatch
    extra = dict(case.get("extra") or {})
    copy: SQLiteCopy | None = None
    run_sql = None
    try:
        if module.kind == "sql":
            copy = SQLiteCopy(Path(db_root) / extra["db_path"])
            db_copy = copy.path
            run_sql = lambda sql, _db_path: run_sql_on_copy(sql, db_copy)  # noqa: E731
        backend = CaseBackend(case)
        result: PaperResult = paper_score(case["data_source"], case["solution_str"],
                                          _ground_truth(case), extra, backend=backend,
                                          run_sql=run_sql, module=module)
    except Exception as exc:  # noqa: BLE001 - reported as a disagreement
        return CaseOutcome(**base, got=None, error=f"{type(exc).__name__}: {exc}", dispatch_ok=dispatch_ok)
    finally:
        if copy is not None:
            copy.close()
    k_used = case.get("k_used")
    first_k = backend.calls[0] if backend.calls else None
    depth_ok = case["original_score"] is None or first_k == k_used
    return CaseOutcome(**base, got=float(result.score), rule=result.raised,
                       dispatch_ok=dispatch_ok, depth_ok=depth_ok)


@dataclass
class Report:
    outcomes: list[CaseOutcome] = field(default_factory=list)

    @property
    def disagreements(self) -> list[CaseOutcome]:
        return [o for o in self.outcomes if not o.agrees or not o.dispatch_ok]

    def table(self, key: str) -> list[tuple[str, int, int, int]]:
        """(name, cases, agreeing, original-raised) per family or module."""
        counts: dict[str, Counter] = defaultdict(Counter)
        for o in self.outcomes:
            c = counts[getattr(o, key)]
            c["n"] += 1
            c["ok"] += int(o.agrees and o.dispatch_ok)
            c["raised"] += int(o.raised_in_original)
        return [(name, c["n"], c["ok"], c["raised"]) for name, c in sorted(counts.items())]


def replay(cases: Iterable[Mapping[str, Any]], db_root: Path = BUNDLED_DB_ROOT,
           progress=None) -> Report:
    report = Report()
    for i, case in enumerate(cases):
        report.outcomes.append(replay_case(case, db_root))
        if progress:
            progress(i + 1)
    return report
