"""Evaluation: the original-query baseline and the harness for models (``deepretrieval eval``).

Scores go through the same path as the training reward (:func:`deepretrieval.rewards.score_batch`),
so numbers are comparable across training, evaluation and serving.

:func:`evaluate_model` generates a query per task row with pinned decoding (a local model through
:mod:`deepretrieval.generation.local`, or ``openai:NAME`` through :mod:`deepretrieval.generation.api`), scores it
like the training reward (strict format) or after lenient extraction, and writes a resumable run
folder: ``generations.jsonl`` (one record per row, appended batch by batch), ``original_query.jsonl``,
``summary.json`` / ``summary.md`` (every system, standard and paper-variant metrics, format and
search error rates) and ``comparison.png``.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deepretrieval.catalog import get_searcher, get_task, row_prefill
from deepretrieval.core import settings
from deepretrieval.core.answer import (
    extract_answer_lenient,
    extract_reasoning_lenient,
    parse_answer,
)
from deepretrieval.core.io import DeferredJson, append_json_lines, save_figure, write_atomic
from deepretrieval.data.original import original_prompt
from deepretrieval.generation.decoding import Decoding, Generator, Prompt, stop_rules
from deepretrieval.generation.factory import make_generator
from deepretrieval.rewards import score_batch
from deepretrieval.tasks import ORIGINAL_QUERY
from deepretrieval.tasks.sql import GOLD_SQL

log = logging.getLogger(__name__)


def score_queries(rows: Sequence[dict[str, Any]], queries: Sequence[str | None], mode: str = "val",
                  searcher=None) -> list[dict[str, Any]]:
    """Metrics (and the task's reward) of given query strings on task rows, with no format check.
    A missing or empty query is scored like a completion that broke the format."""
    items = [(row["data_source"], "", (row.get("reward_model") or {}).get("ground_truth"),
              row.get("extra_info")) for row in rows]
    values = [str(q) if q is not None and str(q).strip() else None for q in queries]
    return score_batch(items, searcher=searcher, values=values, mode=mode)


def summarize(metrics: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Mean of every numeric metric plus ``format_error_rate`` and ``search_error_rate``."""
    if not metrics:
        return {"n": 0}
    keys = [k for k, v in metrics[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    summary: dict[str, float] = {"n": len(metrics)}
    for key in keys:
        values = [float(m[key]) for m in metrics if m.get(key) is not None]
        summary[key] = sum(values) / len(values) if values else math.nan
    summary["format_error_rate"] = sum(not m.get("format_ok", True) for m in metrics) / len(metrics)
    summary["search_error_rate"] = sum(bool(m.get("search_error")) for m in metrics) / len(metrics)
    return summary


def original_query_baseline(rows: Sequence[dict[str, Any]], mode: str = "val", searcher=None):
    """Per-row metrics of each row's reference query: the original query (``extra_info.query``;
    SQL tasks: the gold SQL), see :func:`baseline_queries`."""
    return score_queries(rows, baseline_queries(rows)[1], mode=mode, searcher=searcher)


# ---------------------------------------------------------------------------------------------
# the harness

RUN_VERSION = 1
BASELINE_NAME = ORIGINAL_QUERY
GOLD_SQL_NAME = GOLD_SQL
KEEP_IDS = 10  # retrieved ids kept per record (keeps run folders small)
GENERATIONS, BASELINE_FILE = "generations.jsonl", "original_query.jsonl"


class _RecordingSearcher:
    """Wraps the searcher the reward uses and keeps the top ids each query got."""

    def __init__(self, inner, keep: int = KEEP_IDS):
        self.inner, self.keep = inner, keep
        self.ids: dict[str, list[str]] = {}

    def _record(self, queries, results):
        for query, result in zip(queries, results):
            ok = result is not None and not getattr(result, "error", None)
            self.ids[query] = [str(i) for i in list(result.ids)[: self.keep]] if ok else []
        return results

    def search(self, index, queries, k, *, return_text=False, options=None):
        return self._record(queries, self.inner.search(index, queries, k, return_text=return_text,
                                                       options=options))

    async def asearch(self, index, queries, k, *, return_text=False, options=None):
        return self._record(queries, await self.inner.asearch(index, queries, k, return_text=return_text,
                                                              options=options))


def row_key(row: Mapping[str, Any]) -> str:
    """Stable identity of a row (task, prompt, prefill, query id) for resuming."""
    info = row.get("extra_info") or {}
    blob = json.dumps([row.get("data_source"), row.get("prompt"), info.get("prefill"),
                       info.get("query_id"), info.get("index")], sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _progress(progress: bool) -> bool:
    return settings.progress_enabled(progress)


def _read_jsonl(path: Path) -> list[dict]:
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
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in records))
    return records


def score_completions(rows: Sequence[Mapping[str, Any]], completions: Sequence[str], *,
                      prefill_used: bool = True, extract: str = "strict", mode: str = "val",
                      searcher=None) -> list[dict[str, Any]]:
    """Score one completion per row and describe it: strict format verdict, reasoning, the query
    searched, the top retrieved ids and the metrics (``score`` = the task's reward).

    ``extract="strict"``: the training reward (bad format → the table's format penalty, nothing
    searched). ``"lenient"``: the query is extracted leniently
    (:func:`deepretrieval.core.answer.extract_answer_lenient`) and searched whatever the format.
    ``prefill_used``: the completion continues the row's prefill (local models, vLLM servers);
    False when the generator could not prefill (plain chat APIs)."""

    if extract not in ("strict", "lenient"):
        raise ValueError(f"extract must be 'strict' or 'lenient', not {extract!r}")
    recorder = _RecordingSearcher(searcher or get_searcher())
    items, values, described = [], [], []
    for row, completion in zip(rows, completions):
        task = get_task(row["data_source"])
        completion = completion if isinstance(completion, str) else ""
        prefill = row_prefill(row) if prefill_used else ""
        full = prefill + completion
        parsed = parse_answer(full, task.answer_key, reasoning=task.reasoning)
        extra = dict(row.get("extra_info") or {})
        extra["prefill"] = prefill
        gt = (row.get("reward_model") or {}).get("ground_truth")
        items.append((row["data_source"], completion, gt, extra))
        query = parsed.value if parsed.ok else None
        how = "strict" if parsed.ok else None
        if extract == "lenient" and not parsed.ok:
            query = extract_answer_lenient(full, task.answer_key)
            how = "lenient" if query else None
        values.append(query)
        described.append({"completion": completion, "prefill": prefill,
                          "reasoning": parsed.reasoning if parsed.ok else extract_reasoning_lenient(full),
                          "query": query, "extracted": how, "format_ok": parsed.ok,
                          "format_error": parsed.error})
    metrics = score_batch(items, searcher=recorder, values=values if extract == "lenient" else None,
                          mode=mode)
    for desc, m in zip(described, metrics):
        desc["retrieved"] = recorder.ids.get(desc["query"], []) if desc["query"] and m.get("format_ok") else []
        desc["metrics"] = m
    return described


def baseline_queries(rows: Sequence[Mapping[str, Any]]) -> tuple[str, list[str | None]]:
    """(system name, query per row) of the reference system of a task: the original query, or
    for SQL tasks (where the question cannot be executed) the gold SQL, an upper bound."""
    task = get_task(rows[0]["data_source"])
    return task.family.reference_queries(task, list(rows))


def _baseline_records(rows, mode, searcher, queries) -> list[dict]:
    recorder = _RecordingSearcher(searcher or _default_searcher())
    metrics = score_queries(rows, queries, mode=mode, searcher=recorder)
    out = []
    for i, (row, m, query) in enumerate(zip(rows, metrics, queries)):
        info = row.get("extra_info") or {}
        out.append({"row": i, "key": row_key(row), "query_id": info.get("query_id"),
                    "data_source": row["data_source"], "query": query,
                    "retrieved": recorder.ids.get(query, []) if query else [], "metrics": m})
    return out


def _default_searcher():
    return get_searcher()


def _record_summary(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """:func:`summarize` over every sample of every record, plus the strict format error rate
    (and best-of-n when there are several samples per row)."""
    samples = [s for r in records for s in (r.get("samples") or [r])]
    summary = summarize([s["metrics"] for s in samples])
    summary["rows"] = len(records)
    if samples and "format_ok" in samples[0]:
        summary["strict_format_error_rate"] = sum(not s["format_ok"] for s in samples) / len(samples)
    if any(r.get("samples") for r in records):
        best = [max(s["metrics"]["score"] for s in r.get("samples") or [r]) for r in records]
        summary["best_of_n_score"] = sum(best) / len(best)
    return summary


def _same_run(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    old = {"prompt_format": "ours", **old}  # run folders written before the setting existed
    return [k for k in ("version", "model", "base_url", "decoding", "extract", "prefill_used", "mode",
                        "prompt_format") if old.get(k) != new.get(k)]


PROMPT_FORMATS = ("auto", "original", "ours")
_ORIGINAL_HUB_ORG = "deepretrieval/"  # the released checkpoints: huggingface.co/DeepRetrieval


def is_original_checkpoint(model: Any) -> bool:
    """A checkpoint of the original DeepRetrieval project: a released one (hub id
    ``DeepRetrieval/...``) or a folder in the original trainer's layout ``.../actor/global_step_N``
    (verl 0.9.1, ours, writes ``global_step_N/actor``)."""
    if not isinstance(model, (str, os.PathLike)):
        return False
    name = str(model)
    if name.startswith("openai:"):
        return False
    if name.lower().startswith(_ORIGINAL_HUB_ORG) and name.count("/") == 1:
        return True
    parts = Path(name).parts
    return any(a == "actor" and b.startswith("global_step_") for a, b in itertools.pairwise(parts))


def resolve_prompt_format(model: Any, rows: Sequence[Mapping[str, Any]], prompt_format: str = "auto") -> str:
    """``"original"`` (generate from each row's original raw prompt, ``extra_info.original_prompt``)
    or ``"ours"`` (the row's chat messages through the model's chat template). ``"auto"``: original
    when the model is an original checkpoint (:func:`is_original_checkpoint`) and every row carries
    its original prompt (rows read from an original DeepRetrieval file), else ours."""
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"unknown prompt format {prompt_format!r} (known: {', '.join(PROMPT_FORMATS)})")
    missing = sum(original_prompt(r) is None for r in rows)
    if prompt_format == "original":
        if isinstance(model, str) and model.startswith("openai:"):
            raise ValueError("original prompts are raw strings for a local model; a chat API takes "
                             "messages (use the default prompt format)")
        if missing:
            raise ValueError(f"{missing} of {len(rows)} rows carry no original prompt: only rows read "
                             f"from an original DeepRetrieval parquet file (--rows FILE, or a file "
                             f"written by `deepretrieval convert`) have one")
        return "original"
    if prompt_format == "ours" or not is_original_checkpoint(model):
        return "ours"
    if missing:
        log.warning("%s is an original DeepRetrieval checkpoint, trained on the original prompts, but "
                    "these rows carry none; it is evaluated on our chat prompt. Pass the original "
                    "parquet file (--rows FILE) to use the prompts it was trained on", model)
        return "ours"
    return "original"


def evaluate_model(model: Any, rows: Sequence[Mapping[str, Any]], *, out_dir: str | os.PathLike | None = None,
                   max_new_tokens: int = 256, batch_size: int = 8, greedy: bool = True,
                   temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, n: int = 1,
                   extract: str = "strict", resume: bool = True, progress: bool = True,
                   base_url: str | None = None, api_key: str | None = None, api_prefill: str = "none",
                   cache_dir: str | os.PathLike | None = None, backend: str = "auto",
                   device: str | None = None, dtype: str | None = None, tokenizer: Any = None,
                   name: str | None = None, mode: str = "val", baseline: bool = True,
                   plot: bool = True, searcher=None, prompt_format: str = "auto",
                   **generator_kw: Any) -> dict[str, Any]:
    """Evaluate ``model`` on task ``rows`` and return the report.

    ``model``: a local folder, a hub name, a ``.gguf`` file, ``openai:NAME`` (with ``base_url``;
    key from ``OPENAI_API_KEY``), a loaded transformers model (with ``tokenizer``) or a generator
    object (anything with the ``generate(prompts, decoding, ...)`` method of
    :mod:`deepretrieval.generation.local`). Decoding is pinned: greedy by default; ``greedy=False`` samples
    with ``temperature``/``top_p``/``seed`` and ``n`` completions per row.

    With ``out_dir`` the run is written there and resumable: records are appended batch by batch
    and a rerun skips rows already done (``resume=False`` starts over). Returns ``{"model", "task",
    "summary", "baseline", "systems", "records", "baseline_records", "files", ...}``; ``summary``
    holds the mean of every metric (``score`` is the task's reward) and the error rates.

    ``prompt_format``: ``"original"`` generates from each row's original DeepRetrieval prompt
    string as it is (no chat template), ``"ours"`` from the row's chat messages, ``"auto"`` picks
    original for original checkpoints on original rows (:func:`resolve_prompt_format`). Scoring
    is the same either way: the completion continues the row's prefill.
    """

    rows = list(rows)
    if not rows:
        raise ValueError("no rows to evaluate")
    sources = sorted({str(r.get("data_source")) for r in rows})
    if len(sources) > 1:
        raise ValueError(f"rows mix several tasks {sources}; evaluate one task at a time")
    if extract not in ("strict", "lenient"):
        raise ValueError(f"extract must be 'strict' or 'lenient', not {extract!r}")
    decoding = Decoding(max_new_tokens=max_new_tokens, greedy=greedy, temperature=temperature,
                        top_p=top_p, seed=seed, n=n)

    generator = None
    if isinstance(model, Generator):
        generator = model
        system = name or str(generator.name)
        prefill_used = bool(generator.uses_prefill)
    elif isinstance(model, (str, os.PathLike)):  # loaded only when rows are left to generate
        system = name or (Path(model).name if Path(model).exists() else str(model))
        prefill_used = not str(model).startswith("openai:") or api_prefill == "continue"
    else:  # a loaded transformers model
        generator = make_generator(model, tokenizer=tokenizer)
        system = name or str(generator.name)
        prefill_used = True
    model_id = str(model) if isinstance(model, (str, os.PathLike)) else system
    prompt_format = resolve_prompt_format(model, rows, prompt_format)
    if prompt_format == "original":
        prefill_used = True  # the raw prompt ends with the assistant prefix the model continues
    config = {"version": RUN_VERSION, "model": model_id, "name": system, "base_url": base_url,
              "prompt_format": prompt_format,
              "decoding": decoding.to_dict(), "extract": extract, "prefill_used": prefill_used,
              "mode": mode, "task": sources[0], "split": (rows[0].get("extra_info") or {}).get("split")}

    out = Path(out_dir) if out_dir is not None else None
    done: dict[str, dict] = {}
    # run.json is written with the first finished rows: a failed start leaves nothing
    run_record = DeferredJson(out / "run.json" if out is not None else None, config)

    if out is not None:
        run_file, gen_file = out / "run.json", out / GENERATIONS
        if resume and run_file.exists():
            old = json.loads(run_file.read_text())
            diff = _same_run(old, config)
            if diff and gen_file.exists():
                raise ValueError(f"{out} holds a run with other settings ({', '.join(diff)}); use another "
                                 f"output folder or start over (--no-resume)")
        if not resume:
            gen_file.unlink(missing_ok=True)
        for record in _read_jsonl(gen_file):
            done.setdefault(record.get("key"), record)

    keys = [row_key(r) for r in rows]
    ids = [str((r.get("extra_info") or {}).get("query_id", (r.get("extra_info") or {}).get("index"))) for r in rows]
    rows_digest = hashlib.sha1("\n".join(ids).encode()).hexdigest()[:16]  # which queries, any prompt
    pending = [i for i, k in enumerate(keys) if k not in done]
    if len(pending) < len(rows):
        log.info("resuming: %d of %d rows already done", len(rows) - len(pending), len(rows))
    if pending and generator is None:
        generator = make_generator(model, backend=backend, base_url=base_url, api_key=api_key,
                                   device=device, dtype=dtype, cache_dir=cache_dir,
                                   api_prefill=api_prefill, **generator_kw)
    bar = None
    if _progress(progress) and pending:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(rows), initial=len(rows) - len(pending), desc=f"eval {system}", unit="row")
    searcher = searcher or _default_searcher()
    try:
        for start in range(0, len(pending), max(1, batch_size)):
            idx = pending[start: start + batch_size]
            batch = [rows[i] for i in idx]
            prefills = [row_prefill(r) for r in batch]
            stops = stop_rules(prefills[0] if prefill_used and len(set(prefills)) == 1 else "")
            prompts = [Prompt.of(r["prompt"], p, original_prompt(r) if prompt_format == "original" else None)
                       for r, p in zip(batch, prefills)]
            outputs = generator.generate(prompts, Decoding(**{**decoding.__dict__, "stops": stops}),
                                         batch_size=len(batch), seed_offset=idx[0])
            flat_rows = [r for r, outs in zip(batch, outputs) for _ in outs]
            flat = score_completions(flat_rows, [c for outs in outputs for c in outs],
                                     prefill_used=prefill_used, extract=extract, mode=mode,
                                     searcher=searcher)
            new_records, pos = [], 0
            for i, row, outs in zip(idx, batch, outputs):
                samples = flat[pos: pos + len(outs)]
                pos += len(outs)
                info = row.get("extra_info") or {}
                record = {"row": i, "key": keys[i], "query_id": info.get("query_id"),
                          "data_source": row["data_source"], "original_query": info.get("query"),
                          "prompt": [dict(m) for m in row["prompt"]], **samples[0]}
                if len(samples) > 1:
                    record["samples"] = samples
                new_records.append(record)
                done[keys[i]] = record
            if out is not None:
                run_record.write()
                append_json_lines(out / GENERATIONS, new_records, default=_json_default)
            if bar:
                bar.update(len(batch))
    finally:
        if bar:
            bar.close()

    records = [done[k] for k in keys]
    for i, record in enumerate(records):  # positions of this run (a resumed file may differ)
        record["row"] = i
    report = {**config, "rows": len(rows), "rows_digest": rows_digest, "summary": _record_summary(records),
              "records": records}
    systems = {}
    if baseline:
        base_name, base_queries = baseline_queries(rows)
        base_records = _baseline_records(rows, mode, searcher, base_queries)
        report["baseline"] = summarize([r["metrics"] for r in base_records])
        report["baseline_name"] = base_name
        report["baseline_records"] = base_records
        systems[base_name] = report["baseline"]
    systems[system] = report["summary"]
    report["systems"] = systems
    if out is not None:
        run_record.write()
        report["files"] = write_report(report, out, plot=plot)
    return report


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _metric_columns(systems: Mapping[str, Mapping[str, Any]]) -> list[str]:
    first = ["n", "rows", "score"]
    last = ["format_error_rate", "strict_format_error_rate", "search_error_rate", "best_of_n_score"]
    keys: list[str] = []
    for summary in systems.values():
        keys += [k for k in summary if k not in keys]
    return ([k for k in first if k in keys] + [k for k in keys if k not in first + last]
            + [k for k in last if k in keys])


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
             "- `score` is the task's reward (same function as training); `*_paper` columns (where the "
             "task has them) are the paper's metric variants next to the standard ones; "
             "`format_error_rate` counts outputs with no usable query, `strict_format_error_rate` "
             "outputs that break the strict answer format, `search_error_rate` failed searches.",
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


def write_report(report: Mapping[str, Any], out: str | os.PathLike, *, plot: bool = True) -> dict[str, str]:
    """Write ``summary.json``, ``summary.md``, ``original_query.jsonl`` and ``comparison.png``."""
    out = Path(out)
    files = {"generations": str(out / GENERATIONS)}
    if report.get("baseline_records") is not None:
        write_atomic(out / BASELINE_FILE, "".join(json.dumps(r, default=_json_default) + "\n"
                                                   for r in report["baseline_records"]))
        files["baseline"] = str(out / BASELINE_FILE)
    summary = {k: v for k, v in report.items() if k not in ("records", "baseline_records", "files")}
    write_atomic(out / "summary.json", json.dumps(summary, indent=2, default=_json_default) + "\n")
    write_atomic(out / "summary.md", summary_markdown(report))
    files.update(summary_json=str(out / "summary.json"), summary_md=str(out / "summary.md"))
    if plot:
        try:
            files["plot"] = str(plot_systems(report["systems"], out / "comparison.png",
                                             f"{report.get('task')} / {report.get('split')}"))
        except ImportError:
            log.warning("matplotlib is not installed: no comparison.png (pip install matplotlib)")
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
            if name in (BASELINE_NAME, GOLD_SQL_NAME) and name in systems:
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
            try:
                plot_systems(systems, out / "comparison.png", f"{task} / {split}")
            except ImportError:
                log.warning("matplotlib is not installed: no comparison.png (pip install matplotlib)")
    return report


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A markdown table of dicts."""
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
