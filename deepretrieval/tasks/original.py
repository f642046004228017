"""The original DeepRetrieval data, as published: ``data_source`` names, ground truths, raw prompts.

The original project's parquet rows (``DeepRetrieval/datasets`` on the Hub, written by its
``code/data_preprocess/*.py``) differ from ours in three ways:

* ``data_source`` names carry the dataset, a split and variant markers: ``pubmed_32``, ``ctgov``,
  ``pmd_no_reason``, ``nq_serini``, ``triviaqa``, ``squad``, ``scifact_train``, ``nfcorpus_test``,
  ``fever_val``, ``hotpotqa_*``, ``msmarco_beir_*``, ``msmarco_health_*``, ``spider_train``,
  ``bird_test``; dense-retrieval variants contain ``dense``, answer-only ones ``no_reason``/``wor``.
* ground truths: ``{"target": "<doc id>"}`` (SciFact: one row per qrels line), ``{"target": [ids],
  "score": [grades]}`` (NFCorpus, FEVER, HotpotQA, MS MARCO), ``{"target": [answers]}``
  (NQ / TriviaQA / SQuAD), ``{"target": [PMIDs or NCT ids]}`` (PubMed / CTgov, with a top-level
  ``pub_date`` column), ``{"target": "<gold SQL>"}`` with ``extra_info.db_path`` (Spider / BIRD).
* the prompt is one user message holding a raw string with the model's special tokens and the start
  of the assistant turn, e.g. ``<|im_start|>system\\n…<|im_end|>\\n<|im_start|>user\\n…\\nAssistant:
  Let me think step by step. \\n<think>\\n``.

:func:`resolve` (one of the resolvers listed in :mod:`deepretrieval.catalog`) maps every such
name onto our tasks, so ``compute_score`` accepts the rows as they are;
:mod:`deepretrieval.data.original` rewrites the rows as our chat-message rows.
See ``docs/datasets.md`` for the table.
"""
from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from deepretrieval.core.answer import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    THINK_CLOSE,
    THINK_OPEN,
    ParsedAnswer,
    parse_answer,
)
from deepretrieval.tasks.base import Family, Task, UnknownTask
from deepretrieval.tasks.beir import BEIR
from deepretrieval.tasks.beir import TABLE as BEIR_TABLE

#: BEIR-style collections the original trained on (or that follow the same recipe). A name without
#: a registered task becomes a BEIR task on the fly whose index is the dataset name.
BEIR_DATASETS = ("scifact", "nfcorpus", "fiqa", "hotpotqa", "fever", "climate_fever", "msmarco_beir",
                 "msmarco_health", "msmarco_science", "msmarco_tech", "msmarco_all", "msmarco",
                 "arguana", "scidocs", "trec_covid", "quora", "dbpedia_entity", "nq_beir",
                 "webis_touche2020", "touche2020")
#: Non-BEIR datasets: the original's dataset name → our task.
_OTHER = {"pubmed": "pubmed", "pmd": "pubmed", "ctgov": "ctgov", "nq_serini": "nq", "nq": "nq",
          "triviaqa": "triviaqa", "squad": "squad", "spider": "spider", "bird": "bird"}
#: Name tokens that mark a variant, not a dataset (split suffixes are handled separately).
_VARIANT_TOKENS = frozenset({"dense", "sparse", "bm25", "wor", "no", "reason", "noreason",
                             "noreasoning", "reasoning"})
#: Model-size tokens of the original's prompt variants (``pubmed_32``, ``pubmed_4b``).
_SIZE_TOKEN = re.compile(r"^\d+(\.\d+)?[bm]?$")
#: Original tasks with no counterpart here (literature screening, countdown, WikiSQL, ...).
UNSUPPORTED = ("screening", "literature", "countdown", "wikisql", "matching")
SPLITS = ("train", "test", "val", "dev")

_BEIR_INSTRUCTION = (
    "Rewrite the query below into a search query for a search engine over the {dataset} "
    "collection, so that it retrieves the documents relevant to it.\n\nQuery: {{query}}")


@dataclass(frozen=True)
class OriginalName:
    """What an original ``data_source`` name says."""

    data_source: str
    dataset: str          # e.g. "nfcorpus", "msmarco_beir", "pubmed", "spider"
    task: str             # our base task name, e.g. "nfcorpus", "pubmed", "nq"
    family: str           # "beir" | "search_engine" | "evidence" | "sql"
    dense: bool
    no_reason: bool
    split: str | None     # "train" | "test" | "val" (dev → val) | None


def _family_of(task: str) -> str:
    return {"pubmed": "search_engine", "ctgov": "search_engine", "nq": "evidence",
            "triviaqa": "evidence", "squad": "evidence", "spider": "sql", "bird": "sql"}.get(task, "beir")


def parse_name(data_source: str) -> OriginalName | None:
    """Parse an original ``data_source``; None when it is not one of the original's names."""
    if not isinstance(data_source, str) or not data_source:
        return None
    name = data_source.strip().lower().replace("-", "_")
    if any(u in name for u in UNSUPPORTED):
        return None
    tokens = name.split("_")
    split = None
    if tokens[-1] in SPLITS and len(tokens) > 1:
        split = {"dev": "val"}.get(tokens[-1], tokens[-1])
        tokens = tokens[:-1]
    joined = "_".join(tokens)
    no_reason = ("no_reason" in joined or "noreason" in joined or "wor" in tokens
                 or "noreasoning" in joined)
    dense = "dense" in tokens
    core = "_".join(t for t in tokens if t not in _VARIANT_TOKENS and not _SIZE_TOKEN.match(t))
    if core in BEIR_DATASETS:
        return OriginalName(data_source, core, core, "beir", dense, no_reason, split)
    task = _OTHER.get(core)
    if task is not None:
        return OriginalName(data_source, core, task, _family_of(task), dense, no_reason, split)
    return None


# ---------------------------------------------------------------------------------------------
# the original trainer's reward dispatch

#: The original trainer's reward dispatch (``main_ppo._select_rm_score_fn``): substring tests, in
#: order. (substring, module, {sub-substring: module}) — the first substring contained wins. The
#: module names are the keys of :data:`deepretrieval.paper.modules.PAPER_MODULES`.
DISPATCH: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    ("screening", "screening.py", ()),
    ("pubmed", "pubmed.py", ()),
    ("pmd_no_reason", "pmd_no_reason.py", ()),
    ("ctgov", "ctgov.py", ()),
    ("scifact", "scifact.py", (("dense", "reward_score_dense/scifact.py"),)),
    ("nfcorpus", "nfcorpus.py", (("dense", "reward_score_dense/nfcorpus.py"),)),
    ("nq_serini", "nq_serini.py", (("no_reason", "nq_no_reason.py"),)),
    ("triviaqa", "triviaqa.py", (("no_reason", "tqa_no_reason.py"),)),
    ("squad", "squad.py", (("no_reason", "squad_no_reason.py"),)),
    ("hotpotqa", "hotpotqa.py", (("dense", "reward_score_dense/hotpotqa.py"),)),
    ("fever", "fever.py", (("dense", "reward_score_dense/fever.py"),)),
    ("msmarco_beir", "msmarco_beir.py", (("dense", "reward_score_dense/msmarco_beir.py"),)),
    ("msmarco", "msmarco.py", ()),
    ("bird", "bird.py", (("wor", "bird_no_reason.py"),)),
    ("spider", "spider.py", (("wor", "spider_no_reason.py"),)),
    # not in the original dispatch (it raised NotImplementedError): fiqa.py existed but was never
    # selected; the paper profile selects it for fiqa_* names.
    ("fiqa", "fiqa.py", ()),
)


def paper_module_name(data_source: str) -> str | None:
    """The original module that scores ``data_source`` by the original trainer's dispatch (plus
    ``fiqa``); None for names the original did not know. This is the substring rule as the
    original applied it; which names it may decide is :func:`deepretrieval.catalog.resolve_name`'s
    business (an agentic spelling or a user collection is never scored by it)."""
    if not isinstance(data_source, str):
        return None
    for needle, module, subs in DISPATCH:
        if needle in data_source:
            for sub, sub_module in subs:
                if sub in data_source:
                    return sub_module
            return module
    return None



def dispatch_prefix(data_source: str) -> bool:
    """Does ``data_source`` *start* with the substring the original dispatch matched in it
    (``screening``, ``scifact_latest_train``, ``bird_wor_train``)? Every name the original's data
    scripts wrote does; a name that only holds one further in (``my_hotpotqa_set``) is not taken
    for an original name."""
    if not isinstance(data_source, str):
        return False
    for needle, _module, _subs in DISPATCH:
        if needle in data_source:
            return data_source.startswith(needle)
    return False


# ---------------------------------------------------------------------------------------------
# ground truths

def _as_list(value: Any) -> list:
    """Lists, tuples, numpy arrays, scalars and list-looking strings → a Python list."""
    if value is None:
        return []
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in "[(" and text[-1:] in "])":
            for loader in (json.loads, ast.literal_eval):
                try:
                    parsed = loader(text)
                except (ValueError, SyntaxError):
                    continue
                if isinstance(parsed, (list, tuple)):
                    return list(parsed)
        return [value]
    return [value]


def _maybe_mapping(value: Any) -> Any:
    if isinstance(value, str) and value.strip()[:1] == "{":
        for loader in (json.loads, ast.literal_eval):
            try:
                parsed = loader(value)
            except (ValueError, SyntaxError):
                continue
            if isinstance(parsed, dict):
                return parsed
    return value


def normalize_ground_truth(ground_truth: Any, family: str) -> dict[str, Any]:
    """An original ground truth (any of the shapes in the module docstring, or ours) → ours:
    ``{"target": [str, ...]}`` plus ``"grades": [float, ...]`` for BEIR when grades are known."""
    gt = _maybe_mapping(ground_truth)
    if not isinstance(gt, Mapping):
        gt = {"target": gt}
    target = _maybe_mapping(gt.get("target"))
    grades = None
    if isinstance(target, Mapping):  # qrels dict {doc: grade}
        grades = [float(g) for g in target.values()]
        target = list(target.keys())
    if family == "sql":
        ids = [str(t) for t in ([target] if isinstance(target, str) else _as_list(target))]
    else:
        ids = [str(t) for t in _as_list(target)]
    out: dict[str, Any] = {k: v for k, v in gt.items()
                           if k not in ("target", "score", "scores", "grades", "label", "labels")}
    out["target"] = ids
    if family == "beir":
        for key in ("grades", "score", "scores", "label", "labels"):
            if grades is None and gt.get(key) is not None:
                raw = _as_list(gt.get(key))
                if len(raw) == len(ids):
                    try:
                        grades = [float(g) for g in raw]
                    except (TypeError, ValueError):
                        grades = None
        if grades is not None:
            out["grades"] = grades
    return out


def normalize_extra_info(extra_info: Any, name: OriginalName | None = None) -> dict[str, Any]:
    extra = dict(extra_info) if isinstance(extra_info, Mapping) else {}
    if name is not None and name.split and "split" not in extra:
        extra["split"] = name.split
    db_path = extra.get("db_path")
    if db_path and not extra.get("db_id"):
        extra["db_id"] = Path(str(db_path)).stem
    return extra


# ---------------------------------------------------------------------------------------------
# the tasks the resolver hands out

class OriginalFamily(Family):
    """Wraps a family: normalises the original's ground truths and extra_info, then delegates."""

    def __init__(self, inner: Family, family_key: str, name: OriginalName | None = None):
        self.inner = inner
        self.name = inner.name
        self.family_key = family_key
        self.original = name

    def __getattr__(self, attr):  # anything else a family offers
        if attr in ("inner", "__setstate__") or attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    def metric_keys(self, task):
        return self.inner.metric_keys(task)

    def empty_metrics(self, task):
        return self.inner.empty_metrics(task)

    def user_message(self, task, fields):
        return self.inner.user_message(task, fields)

    def plan(self, task, value, ground_truth, extra_info, mode):
        return self.inner.plan(task, value, normalize_ground_truth(ground_truth, self.family_key),
                               normalize_extra_info(extra_info, self.original), mode)

    def score(self, task, plan, result, ground_truth, extra_info, mode):
        return self.inner.score(task, plan, result, normalize_ground_truth(ground_truth, self.family_key),
                                normalize_extra_info(extra_info, self.original), mode)

    def reference_queries(self, task, rows):
        normalized: list[Mapping[str, Any]] = [
            {**row, "extra_info": normalize_extra_info(row.get("extra_info"), self.original),
             "reward_model": {**(row.get("reward_model") or {}), "ground_truth": normalize_ground_truth(
                 (row.get("reward_model") or {}).get("ground_truth"), self.family_key)}}
            for row in rows]
        return self.inner.reference_queries(task, normalized)


_ASSISTANT_MARKERS = ("<|im_start|>assistant", "<|start_header_id|>assistant<|end_header_id|>",
                      "\nAssistant:", "Assistant:")


@dataclass(frozen=True)
class OriginalTask(Task):
    """A task reached through an original ``data_source`` name.

    ``parse`` accepts what the original's reward saw: the original prompts end inside the assistant
    turn (``…<think>\\n`` or ``…<answer>\\n``), so a completion that closes a tag its prompt opened
    gets that tag back; a whole decoded sequence (prompt + completion, as the original's reward
    manager passed it) is cut at its last assistant marker. Everything else is the strict check."""

    canonical: str = ""

    def parse(self, completion: Any, extra_info: Mapping[str, Any] | None = None) -> ParsedAnswer:
        if (extra_info or {}).get("prefill") is not None:
            return Task.parse(self, completion, extra_info)
        if not isinstance(completion, str):
            return ParsedAnswer(False, error="completion is not a string")
        text = completion
        for marker in _ASSISTANT_MARKERS:
            if marker in text and ("<|im_start|>" in text or "User:" in text or "<|start_header_id|>" in text):
                text = text.rsplit(marker, 1)[1]
                first = min((i for i in (text.find(THINK_OPEN), text.find(ANSWER_OPEN)) if i >= 0),
                            default=-1)
                if first > 0:
                    text = text[first:]
                break
        if self.reasoning and THINK_OPEN not in text and THINK_CLOSE in text:
            text = THINK_OPEN + text
        if not self.reasoning and ANSWER_OPEN not in text and ANSWER_CLOSE in text:
            text = ANSWER_OPEN + text
        return parse_answer(text, self.answer_key, reasoning=self.reasoning)


def beir_task(dataset: str, dense: bool) -> Task:
    """A BEIR task made on the fly for a collection without a defined task."""
    index = f"{dataset}_dense" if dense else dataset
    return Task(name=index, family=BEIR, index=index,
                instruction=_BEIR_INSTRUCTION.format(dataset=dataset), reward=BEIR_TABLE,
                train_depth=1000, val_depth=10,
                description=f"BEIR {dataset} ({'dense' if dense else 'BM25'} index {index!r}), "
                            f"reward 0.1 + nDCG")


def base_task(name: OriginalName, tasks: Mapping[str, Task]) -> Task:
    """Our task (from ``tasks``, the defined tasks by name) for a parsed original name, before
    the original-format wrapper."""
    dense = "_dense" if name.dense and name.family == "beir" else ""
    wanted = f"{name.task}{dense}{'_no_reason' if name.no_reason else ''}"
    task = tasks.get(wanted)
    if task is None and name.family == "beir":
        task = tasks.get(f"{name.task}{dense}") or beir_task(name.task, bool(dense))
    if task is None:
        task = tasks.get(name.task)
    if task is None:
        raise UnknownTask(
            f"original data_source {name.data_source!r} maps to task {name.task!r} "
            f"({name.family} family), which is not defined here; defined: {sorted(tasks)}")
    if name.no_reason and task.reasoning:
        task = task.variant(name=wanted, reasoning=False, prefill="")
    return task


def resolve(data_source: str, tasks: Mapping[str, Task]) -> Task | None:
    """The resolver: an original ``data_source`` name → an :class:`OriginalTask` over one of
    ``tasks``; None when it is not an original name. ``_test``/``_val``/``_dev`` names always use
    the validation depth (as the original did)."""
    name = parse_name(data_source)
    if name is None:
        return None
    base = base_task(name, tasks)
    values = {f.name: getattr(base, f.name) for f in fields(Task)}
    # the original prompts decide what the assistant turn already holds (see OriginalTask.parse)
    values.update(name=data_source, family=OriginalFamily(base.family, name.family, name),
                  canonical=base.name, prefill="")
    if name.split in ("test", "val"):
        values["train_depth"] = base.val_depth
    return OriginalTask(**values)
