"""The evaluation harness: one system on task rows, next to reference systems, in a resumable run
folder. Single-shot evaluation (:mod:`deepretrieval.evaluation.single_shot`) and agentic evaluation
(:mod:`deepretrieval.agent.evaluate`) are two cases of :func:`evaluate`; what differs between them
is the :class:`Rollout` they pass in.

A **rollout** answers a batch of task rows and scores the answers: ``run(rows, positions)`` returns
one record body per row (JSON-ready; its ``"metrics"`` are the training reward's metrics, ``score``
the reward) and ``summary(records)`` the system's line of the report. The harness owns everything
else, once:

* the per-row record: ``{"row", "key", "query_id", "data_source"}`` followed by the rollout's body;
* the resume rule (:func:`resume_conflicts`): ``generations.jsonl`` is appended batch by batch, a
  rerun skips rows whose key is in it, and refuses a folder whose ``run.json`` holds other settings;
  ``run.json`` is written with the first finished rows (a failed start leaves nothing);
* reference systems (:class:`Reference`: a rollout run over every row and its JSONL file);
* the report (:func:`deepretrieval.evaluation.report.write_report`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from deepretrieval.core import settings as env_settings
from deepretrieval.core.io import DeferredJson, append_json_lines, write_atomic
from deepretrieval.evaluation.report import (
    GENERATIONS,
    json_default,
    json_lines,
    write_report,
)

log = logging.getLogger(__name__)

RUN_VERSION = 1
#: run.json keys that name the run but do not change its records (not compared on resume).
DESCRIPTIVE_KEYS = ("name", "task", "split")
#: Settings added after run folders were first written, with the value older folders had.
SETTING_DEFAULTS = {"prompt_format": "ours"}


class Rollout(Protocol):
    """A system the harness evaluates: the model (single-shot generation, an agent's episodes) or
    a reference beside it (the original query, closed-book, naive RAG)."""

    #: The system's name in the report.
    name: str

    def run(self, rows: Sequence[Mapping[str, Any]], positions: Sequence[int]) -> list[dict[str, Any]]:
        """One record body per row, in order, each with the row's ``"metrics"``. ``positions``:
        the rows' places in the evaluated list (e.g. sampling seeds)."""
        ...

    def summary(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """The system's report line over its records."""
        ...


@dataclass(frozen=True)
class Reference:
    """A reference system: a rollout run over every row (never resumed: references are cheap or
    deterministic) whose records go to ``file`` in the run folder."""

    rollout: Rollout
    file: str


def row_key(row: Mapping[str, Any]) -> str:
    """Stable identity of a row (task, prompt, prefill, query id) for resuming."""
    info = row.get("extra_info") or {}
    blob = json.dumps([row.get("data_source"), row.get("prompt"), info.get("prefill"),
                       info.get("query_id"), info.get("index")], sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def rows_digest(rows: Sequence[Mapping[str, Any]]) -> str:
    """Which queries were evaluated, whatever their prompts (``eval-compare`` checks it)."""
    ids = [str((r.get("extra_info") or {}).get("query_id", (r.get("extra_info") or {}).get("index")))
           for r in rows]
    return hashlib.sha1("\n".join(ids).encode()).hexdigest()[:16]


def record_header(position: int, row: Mapping[str, Any], key: str | None = None) -> dict[str, Any]:
    """The fields every per-row record starts with."""
    info = row.get("extra_info") or {}
    return {"row": position, "key": key or row_key(row), "query_id": info.get("query_id"),
            "data_source": row["data_source"]}


def read_records(path: Path) -> list[dict]:
    """Records of a JSONL file; a torn last line (interrupted write) is dropped and the file
    rewritten without it."""
    if not path.exists():
        return []
    records, bad = [], False
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            bad = True
    if bad:
        log.warning("%s: dropping a partially written line", path)
        write_atomic(path, json_lines(records))
    return records


def resume_conflicts(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The settings of ``new`` (this run's ``run.json``) that differ from ``old`` (the folder's),
    apart from the descriptive ones; empty when the folder's records can be resumed."""
    old = {**SETTING_DEFAULTS, **old}
    return [k for k in new if k not in DESCRIPTIVE_KEYS and old.get(k) != new[k]]


def _one_task(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        raise ValueError("no rows to evaluate")
    sources = sorted({str(r.get("data_source")) for r in rows})
    if len(sources) > 1:
        raise ValueError(f"rows mix several tasks {sources}; evaluate one task at a time")
    return sources[0]


def evaluate(rollout: Rollout, rows: Sequence[Mapping[str, Any]], *, settings: Mapping[str, Any],
             references: Sequence[Reference] = (), out_dir: str | os.PathLike | None = None,
             batch_size: int = 8, resume: bool = True, progress: bool = True,
             plot: bool = True) -> dict[str, Any]:
    """Evaluate ``rollout`` on task ``rows`` (one task) next to ``references``; return the report.

    ``settings``: what makes the run (model, decoding, ...): with the task and split they form
    ``run.json``, compared on resume. With ``out_dir`` the run is written there and resumable
    (``resume=False`` starts over). The report holds the settings, ``rows``, ``rows_digest``,
    ``summary`` (the rollout's), ``systems`` (references first, then the rollout), ``records``,
    ``reference_records`` (by system name) and, with ``out_dir``, ``files``."""
    rows = list(rows)
    task = _one_task(rows)
    config = {"version": RUN_VERSION, **settings, "name": rollout.name, "task": task,
              "split": (rows[0].get("extra_info") or {}).get("split")}
    out = Path(out_dir) if out_dir is not None else None
    run_record = DeferredJson(out / "run.json" if out is not None else None, config)
    done: dict[str, dict] = {}
    if out is not None:
        run_file, gen_file = out / "run.json", out / GENERATIONS
        if not resume:
            gen_file.unlink(missing_ok=True)
        elif run_file.exists() and gen_file.exists():
            conflicts = resume_conflicts(json.loads(run_file.read_text()), config)
            if conflicts:
                raise ValueError(f"{out} holds a run with other settings ({', '.join(conflicts)}); use "
                                 f"another output folder or start over (--no-resume)")
        for record in read_records(gen_file):
            done.setdefault(record.get("key"), record)

    keys = [row_key(r) for r in rows]
    pending = [i for i, k in enumerate(keys) if k not in done]
    if len(pending) < len(rows):
        log.info("resuming: %d of %d rows already done", len(rows) - len(pending), len(rows))
    bar = None
    if pending and env_settings.progress_enabled(progress):
        from tqdm.auto import tqdm
        bar = tqdm(total=len(rows), initial=len(rows) - len(pending), desc=f"eval {rollout.name}", unit="row")
    try:
        for start in range(0, len(pending), max(1, batch_size)):
            idx = pending[start: start + max(1, batch_size)]
            bodies = rollout.run([rows[i] for i in idx], idx)
            new = [{**record_header(i, rows[i], keys[i]), **body} for i, body in zip(idx, bodies)]
            for record in new:
                done[record["key"]] = record
            if out is not None:
                run_record.write()
                append_json_lines(out / GENERATIONS, new, default=json_default)
            if bar:
                bar.update(len(idx))
    finally:
        if bar:
            bar.close()

    records = [done[k] for k in keys]
    for i, record in enumerate(records):  # positions of this run (a resumed file may differ)
        record["row"] = i
    summary = rollout.summary(records)
    systems: dict[str, Any] = {}
    reference_records: dict[str, list[dict]] = {}
    everything = list(range(len(rows)))
    for ref in references:
        bodies = ref.rollout.run(rows, everything)
        recs = [{**record_header(i, row, k), **body} for i, (row, k, body) in enumerate(zip(rows, keys, bodies))]
        reference_records[ref.rollout.name] = recs
        systems[ref.rollout.name] = ref.rollout.summary(recs)
    systems[rollout.name] = summary
    report: dict[str, Any] = {**config, "rows": len(rows), "rows_digest": rows_digest(rows),
                              "summary": summary, "systems": systems, "records": records,
                              "reference_records": reference_records}
    if out is not None:
        run_record.write()
        report["files"] = write_report(report, out, plot=plot,
                                       reference_files={r.rollout.name: r.file for r in references})
    return report
