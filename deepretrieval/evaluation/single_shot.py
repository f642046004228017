"""Single-shot evaluation (``deepretrieval eval`` on query-writing tasks): the harness's case where
the model writes one query per row, next to the task's reference queries.

:func:`evaluate_model` generates a query per task row with pinned decoding (a local model through
:mod:`deepretrieval.generation.local`, or ``openai:NAME`` through :mod:`deepretrieval.generation.api`),
scores it like the training reward (strict format) or after lenient extraction
(:class:`SingleShotRollout`), and writes a resumable run folder through
:func:`deepretrieval.evaluation.harness.evaluate`: ``generations.jsonl``, ``original_query.jsonl``
(:class:`ReferenceQueries`), ``summary.json`` / ``summary.md`` (every system, standard and
paper-variant metrics, format and search error rates) and ``comparison.png``.
"""
from __future__ import annotations

import functools
import itertools
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from deepretrieval.catalog import get_searcher, row_prefill
from deepretrieval.data.original import original_prompt
from deepretrieval.evaluation.harness import Reference, evaluate
from deepretrieval.evaluation.scoring import (
    EXTRACT_MODES,
    RecordingSearcher,
    baseline_queries,
    record_summary,
    score_completions,
    score_queries,
    summarize,
)
from deepretrieval.generation.decoding import Decoding, Generator, Prompt, stop_rules
from deepretrieval.generation.factory import make_generator
from deepretrieval.tasks import ORIGINAL_QUERY

log = logging.getLogger(__name__)

BASELINE_NAME = ORIGINAL_QUERY
BASELINE_FILE = "original_query.jsonl"
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


class SingleShotRollout:
    """The model writes one query per row (``decoding.n`` samples with sampling): generate with
    pinned decoding, parse the answer, search and score it like the training reward.

    ``generator``: called once, on the first batch, for the generator (so a finished run never
    loads the model)."""

    def __init__(self, name: str, generator: Callable[[], Any], *, decoding: Decoding,
                 prefill_used: bool, prompt_format: str, extract: str, mode: str, searcher):
        if extract not in EXTRACT_MODES:
            raise ValueError(f"extract must be 'strict' or 'lenient', not {extract!r}")
        self.name, self.generator = name, generator
        self.decoding, self.prefill_used, self.prompt_format = decoding, prefill_used, prompt_format
        self.extract, self.mode, self.searcher = extract, mode, searcher

    def run(self, rows: Sequence[Mapping[str, Any]], positions: Sequence[int]) -> list[dict[str, Any]]:
        prefills = [row_prefill(r) for r in rows]
        stops = stop_rules(prefills[0] if self.prefill_used and len(set(prefills)) == 1 else "")
        prompts = [Prompt.of(r["prompt"], p, original_prompt(r) if self.prompt_format == "original" else None)
                   for r, p in zip(rows, prefills)]
        outputs = self.generator().generate(prompts, Decoding(**{**self.decoding.__dict__, "stops": stops}),
                                            batch_size=len(rows), seed_offset=positions[0])
        flat_rows = [r for r, outs in zip(rows, outputs) for _ in outs]
        flat = score_completions(flat_rows, [c for outs in outputs for c in outs],
                                 prefill_used=self.prefill_used, extract=self.extract, mode=self.mode,
                                 searcher=self.searcher)
        bodies, pos = [], 0
        for row, outs in zip(rows, outputs):
            samples = flat[pos: pos + len(outs)]
            pos += len(outs)
            body = {"original_query": (row.get("extra_info") or {}).get("query"),
                    "prompt": [dict(m) for m in row["prompt"]], **samples[0]}
            if len(samples) > 1:
                body["samples"] = samples
            bodies.append(body)
        return bodies

    def summary(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        return record_summary(records)


class ReferenceQueries:
    """The task's reference system, no model: each row's original query (SQL tasks: the gold SQL,
    an upper bound; :func:`~deepretrieval.evaluation.scoring.baseline_queries`) searched and scored."""

    def __init__(self, rows: Sequence[Mapping[str, Any]], *, mode: str, searcher):
        self.name = baseline_queries(rows)[0]
        self.mode, self.searcher = mode, searcher

    def run(self, rows: Sequence[Mapping[str, Any]], positions: Sequence[int]) -> list[dict[str, Any]]:
        queries = baseline_queries(rows)[1]
        recorder = RecordingSearcher(self.searcher)
        metrics = score_queries(rows, queries, mode=self.mode, searcher=recorder)
        return [{"query": q, "retrieved": recorder.ids.get(q, []) if q else [], "metrics": m}
                for q, m in zip(queries, metrics)]

    def summary(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        return summarize([r["metrics"] for r in records])


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
    and a rerun skips rows already done (``resume=False`` starts over). Returns the harness's report
    (:func:`deepretrieval.evaluation.harness.evaluate`) plus ``baseline`` (the reference system's
    summary), ``baseline_name`` and ``baseline_records`` when ``baseline``; ``summary`` holds the
    mean of every metric (``score`` is the task's reward) and the error rates.

    ``prompt_format``: ``"original"`` generates from each row's original DeepRetrieval prompt
    string as it is (no chat template), ``"ours"`` from the row's chat messages, ``"auto"`` picks
    original for original checkpoints on original rows (:func:`resolve_prompt_format`). Scoring
    is the same either way: the completion continues the row's prefill.
    """

    rows = list(rows)
    if not rows:
        raise ValueError("no rows to evaluate")
    if extract not in EXTRACT_MODES:
        raise ValueError(f"extract must be 'strict' or 'lenient', not {extract!r}")
    decoding = Decoding(max_new_tokens=max_new_tokens, greedy=greedy, temperature=temperature,
                        top_p=top_p, seed=seed, n=n)

    if isinstance(model, Generator):
        system = name or str(model.name)
        prefill_used = bool(model.uses_prefill)
        generator = functools.cache(lambda: model)
    elif isinstance(model, (str, os.PathLike)):  # loaded only when rows are left to generate
        system = name or (Path(model).name if Path(model).exists() else str(model))
        prefill_used = not str(model).startswith("openai:") or api_prefill == "continue"
        generator = functools.cache(lambda: make_generator(
            model, backend=backend, base_url=base_url, api_key=api_key, device=device, dtype=dtype,
            cache_dir=cache_dir, api_prefill=api_prefill, **generator_kw))
    else:  # a loaded transformers model
        loaded = make_generator(model, tokenizer=tokenizer)
        system = name or str(loaded.name)
        prefill_used = True
        generator = functools.cache(lambda: loaded)
    model_id = str(model) if isinstance(model, (str, os.PathLike)) else system
    prompt_format = resolve_prompt_format(model, rows, prompt_format)
    if prompt_format == "original":
        prefill_used = True  # the raw prompt ends with the assistant prefix the model continues
    searcher = searcher or get_searcher()
    rollout = SingleShotRollout(system, generator, decoding=decoding, prefill_used=prefill_used,
                                prompt_format=prompt_format, extract=extract, mode=mode, searcher=searcher)
    references = [Reference(ReferenceQueries(rows, mode=mode, searcher=searcher), BASELINE_FILE)] \
        if baseline else []
    settings = {"model": model_id, "name": system, "base_url": base_url, "prompt_format": prompt_format,
                "decoding": decoding.to_dict(), "extract": extract, "prefill_used": prefill_used,
                "mode": mode}
    report = evaluate(rollout, rows, settings=settings, references=references, out_dir=out_dir,
                      batch_size=batch_size, resume=resume, progress=progress, plot=plot)
    if baseline:
        base_name = references[0].rollout.name
        report["baseline"] = report["systems"][base_name]
        report["baseline_name"] = base_name
        report["baseline_records"] = report["reference_records"][base_name]
    return report
