"""Agentic evaluation (``deepretrieval eval`` on ``agent_*`` tasks).

The model runs full episodes through the episode runner (same protocol, same searcher, same reward
as training); next to it, two reference systems with the same model and decoding:

* **closed-book**: the question alone, answer directly (one turn, no search);
* **naive RAG**: one search with the question itself (top-k of the row), the passages in the
  prompt, answer directly (one turn; ``n_search`` = 1).

Per question: EM, F1, searches, turns, hit, format and search-error flags; the report (``summary.json``,
``summary.md``, ``comparison.png``, written by :func:`deepretrieval.evaluation.harness.write_report`) holds
one row per system. Per-question JSONL with the full trajectory: ``generations.jsonl`` (the model,
appended batch by batch: a rerun resumes), ``closed_book.jsonl``, ``naive_rag.jsonl``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deepretrieval.agent.runner import (
    SEARCH_FAILURES,
    Episode,
    EpisodeRunner,
    episodes_from_rows,
)
from deepretrieval.catalog import get_searcher
from deepretrieval.core import agent_protocol as P
from deepretrieval.core import settings as env_settings
from deepretrieval.core.io import DeferredJson, append_json_lines, write_atomic
from deepretrieval.evaluation.harness import (
    GENERATIONS,
    _json_default,
    _read_jsonl,
    row_key,
    summarize,
    write_report,
)
from deepretrieval.generation.decoding import Decoding, Generator
from deepretrieval.generation.factory import make_generator
from deepretrieval.rewards import score_batch
from deepretrieval.tasks.agentic import CLOSED_BOOK, NAIVE_RAG, blocks_hold_answer
from deepretrieval.tasks.evidence import answers_from_ground_truth

log = logging.getLogger(__name__)

RUN_VERSION = 1
REFERENCE_FILES = {CLOSED_BOOK: "closed_book.jsonl", NAIVE_RAG: "naive_rag.jsonl"}
CLOSED_BOOK_SYSTEM = ("Answer the question. Give only the short final answer inside "
                      "<answer> </answer>, for example <answer> Paris </answer>.")
NAIVE_RAG_SYSTEM = ("Answer the question using the passages between <information> and "
                    "</information>. Give only the short final answer inside <answer> </answer>, "
                    "for example <answer> Paris </answer>.")


def _question(row: Mapping[str, Any]) -> str:
    info = row.get("extra_info") or {}
    if not info.get("query"):
        raise ValueError("agentic rows need the question in extra_info.query")
    return str(info["query"])


def _one_turn(ep: Episode, messages: list[dict[str, str]]) -> Episode:
    """A one-turn episode (any search is refused) with other messages."""
    settings = P.AgentSettings(**{**ep.settings.to_dict(), "max_turns": 1, "protocol": "tags"})
    return Episode(messages, ep.index, settings, "", ep.row)


def closed_book_episodes(rows: Sequence[Mapping[str, Any]]) -> list[Episode]:
    return [_one_turn(ep, [{"role": "system", "content": CLOSED_BOOK_SYSTEM},
                           {"role": "user", "content": f"Question: {_question(ep.row)}"}])
            for ep in episodes_from_rows(rows)]


def naive_rag_episodes(rows: Sequence[Mapping[str, Any]], searcher) -> list[Episode]:
    """One search per question (batched per index / top-k), passages in the user message."""
    base = episodes_from_rows(rows)
    groups: dict[tuple[str, int], list[int]] = {}
    for i, ep in enumerate(base):
        groups.setdefault((ep.index, ep.settings.top_k), []).append(i)
    contents: dict[int, tuple[str, str | None, list[str]]] = {}
    for (index, k), members in groups.items():
        queries = [_question(base[i].row) for i in members]
        try:
            results = searcher.search(index, queries, k, return_text=True)
            errors = [r.error or (None if r.texts is not None or not r.ids
                                  else f"index {index!r} returned no passage texts") for r in results]
        except SEARCH_FAILURES as exc:
            results, errors = [None] * len(members), [str(exc) or type(exc).__name__] * len(members)
        for i, result, error in zip(members, results, errors):
            if error:
                contents[i] = (P.search_error_content(error), error, [])
            else:
                contents[i] = (P.render_passages(result.texts or [], base[i].settings), None,
                               [str(x) for x in result.ids])
    out = []
    for i, ep in enumerate(base):
        content, error, ids = contents[i]
        one = _one_turn(ep, [{"role": "system", "content": NAIVE_RAG_SYSTEM},
                             {"role": "user", "content": f"Question: {_question(ep.row)}\n\n"
                                                         f"{P.INFO_OPEN}{content}{P.INFO_CLOSE}"}])
        one.searches.append({"turn": 0, "query": _question(ep.row), "error": error, "ids": ids})
        if error:  # nothing to answer from: the episode is a search error, not a model failure
            one.search_error, one.error, one.finish = True, error, "search_error"
        out.append(one)
    return out


def _score(rows: Sequence[Mapping[str, Any]], episodes: Sequence[Episode], mode: str,
           reference: str | None = None) -> list[dict[str, Any]]:
    items = [(r["data_source"], e.text, (r.get("reward_model") or {}).get("ground_truth"),
              {**(r.get("extra_info") or {}), P.RETRIEVED_KEY: e.passages})
             for r, e in zip(rows, episodes)]
    metrics = score_batch(items, mode=mode)
    if reference == NAIVE_RAG:
        for m, e, (_, _, gt, _) in zip(metrics, episodes, items):
            # the search happened before the model's turn: in its prompt, not its trajectory
            m["n_search"] = float(e.n_search)
            golds = answers_from_ground_truth(gt)
            m["hit"] = float(blocks_hold_answer(P.injected_blocks(e.messages[-1]["content"]), golds))
            if e.search_error:
                m["search_error"] = True
    return metrics


def _record(i: int, row: Mapping[str, Any], ep: Episode, metrics: dict[str, Any]) -> dict[str, Any]:
    info = row.get("extra_info") or {}
    return {"row": i, "key": row_key(row), "query_id": info.get("query_id"),
            "data_source": row["data_source"], "question": info.get("query"),
            "gold": list(((row.get("reward_model") or {}).get("ground_truth") or {}).get("target") or []),
            "prompt": [dict(m) for m in ep.messages], **ep.to_dict(), "metrics": metrics}


def evaluate_agent(model: Any, rows: Sequence[Mapping[str, Any]], *,
                   out_dir: str | os.PathLike | None = None, max_new_tokens: int = 256,
                   batch_size: int = 16, greedy: bool = True, temperature: float = 1.0,
                   top_p: float = 1.0, seed: int = 0, resume: bool = True, name: str | None = None,
                   mode: str = "val", references: bool = True, plot: bool = True, searcher=None,
                   settings: P.AgentSettings | None = None, progress: bool = True,
                   **generator_kw: Any) -> dict[str, Any]:
    """Evaluate an agent on agentic task rows; returns the report (also written to ``out_dir``).

    ``model``: a generator object (``generate(prompts, decoding, ...)``, e.g. a scripted policy or
    :class:`~deepretrieval.generation.local.TransformersGenerator`) or anything
    :func:`deepretrieval.generation.local.make_generator` takes (``generator_kw`` go there).
    ``max_new_tokens`` is per turn. ``settings`` overrides the rows' protocol settings."""
    rows = list(rows)
    if not rows:
        raise ValueError("no rows to evaluate")
    sources = sorted({str(r.get("data_source")) for r in rows})
    if len(sources) > 1:
        raise ValueError(f"rows mix several tasks {sources}; evaluate one task at a time")
    decoding = Decoding(max_new_tokens=max_new_tokens, greedy=greedy, temperature=temperature,
                        top_p=top_p, seed=seed)
    generator = model if isinstance(model, Generator) else None
    if generator is not None:
        system = name or str(generator.name)
    else:
        system = name or (Path(model).name if Path(str(model)).exists() else str(model))
    episodes = episodes_from_rows(rows, settings=settings)  # validates rows and settings early
    config = {"version": RUN_VERSION, "kind": "agentic", "model": str(model) if generator is None else system,
              "name": system, "decoding": decoding.to_dict(), "extract": "final <answer>",
              "prefill_used": True, "mode": mode, "task": sources[0],
              "split": (rows[0].get("extra_info") or {}).get("split"),
              "agent": episodes[0].settings.to_dict()}
    out = Path(out_dir) if out_dir is not None else None
    done: dict[str, dict] = {}
    # run.json is written with the first finished rows: a failed start leaves nothing
    run_record = DeferredJson(out / "run.json" if out is not None else None, config)

    if out is not None:
        run_file = out / "run.json"
        if not resume:
            (out / GENERATIONS).unlink(missing_ok=True)
        elif run_file.exists() and (out / GENERATIONS).exists():
            old = json.loads(run_file.read_text())
            diff = [k for k in ("version", "model", "decoding", "mode", "agent") if old.get(k) != config.get(k)]
            if diff:
                raise ValueError(f"{out} holds a run with other settings ({', '.join(diff)}); use another "
                                 f"output folder or start over (--no-resume)")
        for rec in _read_jsonl(out / GENERATIONS):
            done.setdefault(rec.get("key"), rec)

    keys = [row_key(r) for r in rows]
    pending = [i for i, k in enumerate(keys) if k not in done]
    searcher = searcher or get_searcher()
    if (pending or references) and generator is None:
        generator = make_generator(model, **generator_kw)
    runner = EpisodeRunner(generator, searcher, decoding=decoding, batch_size=batch_size)
    bar = None
    if pending and env_settings.progress_enabled(progress):
        from tqdm.auto import tqdm
        bar = tqdm(total=len(rows), initial=len(rows) - len(pending), desc=f"agent {system}", unit="q")
    try:
        for start in range(0, len(pending), max(1, batch_size)):
            idx = pending[start: start + batch_size]
            eps = runner.run([episodes[i] for i in idx])
            metrics = _score([rows[i] for i in idx], eps, mode)
            new = [_record(i, rows[i], ep, m) for i, ep, m in zip(idx, eps, metrics)]
            for rec in new:
                done[rec["key"]] = rec
            if out is not None:
                run_record.write()
                append_json_lines(out / GENERATIONS, new, default=_json_default)
            if bar:
                bar.update(len(idx))
    finally:
        if bar:
            bar.close()

    records = [done[k] for k in keys]
    for i, rec in enumerate(records):
        rec["row"] = i
    ids = [str((r.get("extra_info") or {}).get("query_id", (r.get("extra_info") or {}).get("index")))
           for r in rows]
    report: dict[str, Any] = {**config, "rows": len(rows),
                              "rows_digest": hashlib.sha1("\n".join(ids).encode()).hexdigest()[:16]}
    systems: dict[str, Any] = {}
    reference_records: dict[str, list[dict]] = {}
    if references:
        for ref, build in ((CLOSED_BOOK, lambda: closed_book_episodes(rows)),
                           (NAIVE_RAG, lambda: naive_rag_episodes(rows, searcher))):
            eps = build()
            runner.run([e for e in eps if not e.done])
            metrics = _score(rows, eps, mode, reference=ref)
            reference_records[ref] = [_record(i, r, e, m) for i, (r, e, m) in enumerate(zip(rows, eps, metrics))]
            systems[ref] = summarize(metrics)
    report["summary"] = summarize([r["metrics"] for r in records])
    systems[system] = report["summary"]
    report["systems"] = systems
    report["records"] = records
    report["reference_records"] = reference_records
    if out is not None:
        run_record.write()
        files = write_report({k: v for k, v in report.items() if k != "reference_records"}, out, plot=plot)
        for ref, recs in reference_records.items():
            path = out / REFERENCE_FILES[ref]
            write_atomic(path, "".join(json.dumps(r, default=_json_default) + "\n" for r in recs))
            files[REFERENCE_FILES[ref].split(".")[0]] = str(path)
        report["files"] = files
    return report
