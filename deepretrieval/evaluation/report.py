"""The evaluation report: the one writer of run folders, the markdown table, the plot, and
several runs side by side (``deepretrieval eval-compare``).

A run folder holds ``generations.jsonl`` (the model's records, appended by the harness),
one JSONL file per reference system, ``summary.json`` (the run settings and one line per system),
``summary.md`` and ``comparison.png``.
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deepretrieval.core.io import save_figure, write_atomic
from deepretrieval.tasks import ORIGINAL_QUERY
from deepretrieval.tasks.sql import GOLD_SQL

log = logging.getLogger(__name__)

GENERATIONS = "generations.jsonl"
#: Report keys that are records (written as JSONL files), not summary.
RECORD_KEYS = ("records", "reference_records", "files")
#: Reference systems that are the same in every run of a task (kept once by :func:`compare_runs`).
SHARED_REFERENCES = (ORIGINAL_QUERY, GOLD_SQL)


def json_default(value):
    """JSON for numpy values (arrays and scalars) in records; anything else as its string."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def json_lines(records: Sequence[Mapping[str, Any]]) -> str:
    return "".join(json.dumps(r, default=json_default) + "\n" for r in records)


def _metric_columns(systems: Mapping[str, Mapping[str, Any]]) -> list[str]:
    first = ["n", "rows", "score"]
    last = ["format_error_rate", "strict_format_error_rate", "search_error_rate", "best_of_n_score"]
    keys: list[str] = []
    for summary in systems.values():
        keys += [k for k in summary if k not in keys]
    return ([k for k in first if k in keys] + [k for k in keys if k not in first + last]
            + [k for k in last if k in keys])


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A markdown table of dicts."""
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def summary_markdown(report: Mapping[str, Any]) -> str:
    """The report's systems as a markdown table, with the run settings above it."""
    systems = report["systems"]
    columns = _metric_columns(systems)
    table = format_table([{"system": name, **s} for name, s in systems.items()], ["system"] + columns)
    dec = report.get("decoding") or {}
    how = "greedy" if dec.get("greedy", True) else (
        f"sampling T={dec.get('temperature')} top_p={dec.get('top_p')} seed={dec.get('seed')} n={dec.get('n')}")
    run_settings = (f"- rows: {report.get('rows')}; decoding: {how}, max_new_tokens={dec.get('max_new_tokens')}; "
                    f"extraction: {report.get('extract')}; prefill sent: {report.get('prefill_used')}; "
                    f"prompt: {report.get('prompt_format', 'ours')}"
                    if dec else "- systems from several run folders (settings: each run's summary.md)")
    lines = [f"# {report.get('task')} / {report.get('split')}: {report.get('name')}", "", run_settings,
             ("- `score` is the task's reward (same function as training); `*_paper` columns (where the "
              "task has them) are the paper's metric variants next to the standard ones; "
              "`format_error_rate` counts outputs with no usable query, `strict_format_error_rate` "
              "outputs that break the strict answer format, `search_error_rate` failed searches."),
             "", table, ""]
    return "\n".join(lines)


def plot_systems(systems: Mapping[str, Mapping[str, Any]], path: str | os.PathLike, title: str = "") -> Path:
    """Grouped bar chart of every metric (0..1 scale ones) for each system, written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [c for c in _metric_columns(systems) if c not in ("n", "rows")]
    columns = [c for c in columns if all(isinstance(s.get(c), (int, float)) and not math.isnan(float(s[c]))
                                         for s in systems.values() if c in s)]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(columns) + 2), 4.6 + 0.25 * len(systems)))
    width = 0.8 / max(1, len(systems))
    for j, (name, summary) in enumerate(systems.items()):
        xs = [i + j * width for i in range(len(columns))]
        ax.bar(xs, [float(summary.get(c, 0.0) or 0.0) for c in columns], width, label=name)
    ax.set_xticks([i + width * (len(systems) - 1) / 2 for i in range(len(columns))])
    ax.set_xticklabels(columns, rotation=30, ha="right")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.32),
              ncol=min(3, max(1, len(systems))), frameon=False)
    fig.tight_layout()
    return save_figure(fig, path)


def _plot(systems: Mapping[str, Mapping[str, Any]], path: Path, title: str) -> Path | None:
    try:
        return plot_systems(systems, path, title)
    except ImportError:
        log.warning("matplotlib is not installed: no comparison.png (pip install matplotlib)")
        return None


def write_report(report: Mapping[str, Any], out: str | os.PathLike, *,
                 reference_files: Mapping[str, str] | None = None, plot: bool = True) -> dict[str, str]:
    """Write a run's report: one JSONL file per reference system (``reference_files``: system
    name → file name; its records are ``report["reference_records"][name]``), ``summary.json``
    (every report key but the records), ``summary.md`` and ``comparison.png``. Returns the files
    by role: ``generations``, each reference file's stem, ``summary_json``, ``summary_md``, ``plot``."""
    out = Path(out)
    files = {"generations": str(out / GENERATIONS)}
    records = report.get("reference_records") or {}
    for name, file_name in (reference_files or {}).items():
        write_atomic(out / file_name, json_lines(records[name]))
        files[Path(file_name).stem] = str(out / file_name)
    summary = {k: v for k, v in report.items() if k not in RECORD_KEYS}
    write_atomic(out / "summary.json", json.dumps(summary, indent=2, default=json_default) + "\n")
    write_atomic(out / "summary.md", summary_markdown(report))
    files.update(summary_json=str(out / "summary.json"), summary_md=str(out / "summary.md"))
    if plot:
        path = _plot(report["systems"], out / "comparison.png", f"{report.get('task')} / {report.get('split')}")
        if path is not None:
            files["plot"] = str(path)
    return files


def compare_runs(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike | None = None,
                 *, plot: bool = True) -> dict[str, Any]:
    """Put several evaluation runs of one task side by side (e.g. original query, zero-shot,
    trained, an API model): one table and one plot. Systems are keyed by their run name."""
    systems: dict[str, Any] = {}
    task = split = digest = None
    for run in run_dirs:
        path = Path(run) / "summary.json"
        if not path.exists():
            raise FileNotFoundError(f"{run}: no summary.json (not an evaluation run folder)")
        summary = json.loads(path.read_text())
        if digest is not None and (summary.get("rows_digest") != digest or summary.get("split") != split):
            raise ValueError(f"{run} evaluated other queries ({summary.get('task')}/{summary.get('split')}, "
                             f"{summary.get('rows')} rows) than the first run; compare runs over the same "
                             f"queries (same split and --limit / --rows)")
        tasks = [summary.get("task")] if task is None else task + [summary.get("task")]
        task, split, digest = tasks, summary.get("split"), summary.get("rows_digest")
        for name, values in summary["systems"].items():
            if name in SHARED_REFERENCES and name in systems:
                continue  # the same reference system in every run of a task
            key = name if name not in systems else f"{name} ({Path(run).name})"
            systems[key] = values
    task = " vs ".join(dict.fromkeys(str(t) for t in task or []))
    report = {"task": task, "split": split, "name": "comparison", "rows": None, "systems": systems,
              "decoding": {}, "extract": "per run", "prefill_used": "per run"}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "comparison.json", json.dumps(report, indent=2) + "\n")
        write_atomic(out / "comparison.md", summary_markdown(report))
        if plot:
            _plot(systems, out / "comparison.png", f"{task} / {split}")
    return report
