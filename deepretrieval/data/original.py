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

:func:`resolve` (registered with :func:`deepretrieval.tasks.register_resolver`) maps every such name
onto our tasks, so ``compute_score`` accepts the rows as they are; :func:`convert_row` /
:func:`convert_file` (``deepretrieval convert``) rewrite them as our chat-message rows.
See ``docs/datasets.md`` for the table.
"""
from __future__ import annotations

import ast
import json
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..answer import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN, ParsedAnswer, parse_answer
from ..tasks import Family, Task, UnknownTask, get_task, list_tasks, register_resolver

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

    def bundled_rows(self, task, split):
        return self.inner.bundled_rows(task, split)

    def reference_queries(self, task, rows):
        normalized = [{**row, "extra_info": normalize_extra_info(row.get("extra_info"), self.original),
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


def _beir_task(dataset: str, dense: bool) -> Task:
    from ..tasks.beir import BEIR
    index = f"{dataset}_dense" if dense else dataset
    return Task(name=index, family=BEIR, index=index,
                instruction=_BEIR_INSTRUCTION.format(dataset=dataset), reward="beir",
                train_depth=1000, val_depth=10,
                description=f"BEIR {dataset} ({'dense' if dense else 'BM25'} index {index!r}), "
                            f"reward 0.1 + nDCG")


def _registered(name: str) -> Task | None:
    return get_task(name) if name in list_tasks() else None


def base_task(name: OriginalName) -> Task:
    """Our task for a parsed original name (before the original-format wrapper)."""
    dense = "_dense" if name.dense and name.family == "beir" else ""
    wanted = f"{name.task}{dense}{'_no_reason' if name.no_reason else ''}"
    task = _registered(wanted)
    if task is None and name.family == "beir":
        task = _registered(f"{name.task}{dense}") or _beir_task(name.task, bool(dense))
    if task is None:
        task = _registered(name.task)
    if task is None:
        raise UnknownTask(
            f"original data_source {name.data_source!r} maps to task {name.task!r} "
            f"({name.family} family), which is not registered here; registered: {list_tasks()}")
    if name.no_reason and task.reasoning:
        task = task.variant(name=wanted, reasoning=False, prefill="")
    return task


_CACHE: dict[str, Task | None] = {}


def resolve(data_source: str) -> Task | None:
    """The resolver: an original ``data_source`` name → an :class:`OriginalTask`; None otherwise.
    ``_test``/``_val``/``_dev`` names always use the validation depth (as the original did)."""
    if data_source in _CACHE:
        return _CACHE[data_source]
    name = parse_name(data_source)
    if name is None:
        return None
    base = base_task(name)
    values = {f.name: getattr(base, f.name) for f in fields(Task)}
    # the original prompts decide what the assistant turn already holds (see OriginalTask.parse)
    values.update(name=data_source, family=OriginalFamily(base.family, name.family, name),
                  canonical=base.name, prefill="")
    if name.split in ("test", "val"):
        values["train_depth"] = base.val_depth
    task = OriginalTask(**values)
    _CACHE[data_source] = task
    return task


register_resolver(resolve)
from . import byo as _byo  # noqa: E402,F401  (registers the bring-your-own resolver after this one)


# ---------------------------------------------------------------------------------------------
# raw prompt strings → chat messages

_CHATML = re.compile(r"<\|im_start\|>(\w+)[ \t]*\n?(.*?)(?:<\|im_end\|>|(?=<\|im_start\|>)|\Z)", re.DOTALL)
_LLAMA3 = re.compile(r"<\|start_header_id\|>(\w+)<\|end_header_id\|>\n*(.*?)(?:<\|eot_id\|>|(?=<\|start_header_id\|>)|\Z)",
                     re.DOTALL)
_STRIP_TOKENS = ("<|begin_of_text|>", "<|endoftext|>", "<s>", "</s>")


def _split_inline_assistant(content: str) -> tuple[str, str | None]:
    """``…\\nAssistant: Let me think step by step. \\n<think>\\n`` inside a user turn → (user text,
    assistant prefix)."""
    for marker in ("\nAssistant:", "\nassistant:"):
        if marker in content:
            head, tail = content.rsplit(marker, 1)
            return head, tail.lstrip(" ")
    if content.startswith("Assistant:"):
        return "", content[len("Assistant:"):].lstrip(" ")
    return content, None


def split_raw_prompt(text: str) -> tuple[list[dict[str, str]], str]:
    """A raw prompt string → (chat messages, assistant prefix the prompt already started)."""
    if not isinstance(text, str):
        raise ValueError(f"prompt is not a string: {type(text).__name__}")
    raw = text
    for tok in _STRIP_TOKENS:
        raw = raw.replace(tok, "")
    messages: list[dict[str, str]] = []
    prefix = ""
    pattern = _CHATML if "<|im_start|>" in raw else _LLAMA3 if "<|start_header_id|>" in raw else None
    if pattern is not None:
        segments = [(m.group(1).lower(), m.group(2)) for m in pattern.finditer(raw)]
        for i, (role, content) in enumerate(segments):
            last = i == len(segments) - 1
            if role == "assistant" and last:
                prefix = content.lstrip("\n")
                continue
            if role == "user" and last:
                content, inline = _split_inline_assistant(content)
                if inline is not None:
                    prefix = inline
            messages.append({"role": role, "content": content.strip()})
    else:  # plain "System: … User: … Assistant: …" (the original's Llama / base-model prompts)
        body, inline = _split_inline_assistant(raw)
        prefix = inline or ""
        m = re.search(r"(?:^|\n)User:[ \t]*", body)
        if m:
            system = re.sub(r"^\s*System:[ \t]*", "", body[: m.start()]).strip()
            if system:
                messages.append({"role": "system", "content": system})
            messages.append({"role": "user", "content": body[m.end():].strip()})
        else:
            messages.append({"role": "user", "content": body.strip()})
    if not any(m["role"] == "user" for m in messages):
        raise ValueError("no user turn found in the prompt")
    return messages, prefix


def model_prefill(prefix: str) -> str:
    """The part of an assistant prefix our strict parser re-reads: from its first tag on
    (``Let me think step by step. \\n<think>\\n`` → ``<think>\\n``); "" when it opens no tag."""
    idx = [i for i in (prefix.find(THINK_OPEN), prefix.find(ANSWER_OPEN)) if i >= 0]
    return prefix[min(idx):] if idx else ""


def _prompt_messages(prompt: Any) -> tuple[list[dict[str, str]], str]:
    if isinstance(prompt, str):
        return split_raw_prompt(prompt)
    items = _as_list(prompt)
    msgs = [dict(m) for m in items if isinstance(m, Mapping)]
    if not msgs:
        raise ValueError("prompt has no messages")
    joined = "".join(str(m.get("content", "")) for m in msgs)
    special = ("<|im_start|>" in joined or "<|start_header_id|>" in joined
               or "<|begin_of_text|>" in joined or re.search(r"\nAssistant:", joined))
    if len(msgs) == 1 and special:
        return split_raw_prompt(str(msgs[0].get("content", "")))
    return [{"role": str(m.get("role", "user")), "content": str(m.get("content", ""))} for m in msgs], ""


_QUERY_COLUMNS = ("query", "input", "question", "claim")


def convert_row(row: Mapping[str, Any], index: int | None = None, *, keep_data_source: bool = False
                ) -> dict[str, Any]:
    """One original row → our row (chat-message prompt, our ground truth, extra_info with
    ``split``, ``prefill``, ``query``, ``pub_date``, ``db_id`` where known)."""
    data_source = str(row.get("data_source", ""))
    name = parse_name(data_source)
    if name is None:
        try:
            task = get_task(data_source)  # already one of ours
        except KeyError:
            raise ValueError(f"unknown data_source {data_source!r}: not one of the original's names "
                             f"nor a registered task") from None
        family_key = task.family.name if task.family.name in ("beir", "sql") else "other"
        canonical = task.name
    else:
        task = resolve(data_source)
        family_key = name.family
        canonical = task.canonical
    messages, prefix = _prompt_messages(row.get("prompt"))
    reward_model = row.get("reward_model") or {}
    gt = normalize_ground_truth(reward_model.get("ground_truth") if isinstance(reward_model, Mapping)
                                else None, family_key)
    if not gt["target"]:
        raise ValueError("row has an empty ground truth target")
    extra = normalize_extra_info(row.get("extra_info"), name)
    extra.setdefault("split", "train")
    if index is not None:
        extra["index"] = index
    prefill = model_prefill(prefix)
    if name is not None or prefix:
        extra["prefill"] = prefill
    if prefix and prefix != prefill:
        extra["assistant_prefix"] = prefix
    if row.get("pub_date") is not None and "pub_date" not in extra:
        extra["pub_date"] = str(row["pub_date"])
    for col in _QUERY_COLUMNS:
        value = row.get(col)
        if isinstance(value, str) and value.strip() and "query" not in extra:
            extra["query"] = value.strip()
    if row.get("qid") is not None and "query_id" not in extra:
        extra["query_id"] = str(row["qid"])
    if row.get("db_id") and "db_id" not in extra:
        extra["db_id"] = str(row["db_id"])
    extra = {k: (str(v) if isinstance(v, (dict, list)) else v) for k, v in extra.items()}
    return {"data_source": data_source if keep_data_source else canonical,
            "prompt": messages, "ability": task.family.name,
            "reward_model": {"style": "rule", "ground_truth": gt},
            "extra_info": extra}


def convert_rows(rows, *, keep_data_source: bool = False) -> list[dict[str, Any]]:
    out = []
    for i, row in enumerate(rows):
        try:
            out.append(convert_row(row, i, keep_data_source=keep_data_source))
        except (ValueError, KeyError) as exc:
            raise ValueError(f"row {i}: {exc}") from None
    return out


def _uniform(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Same extra_info / ground_truth keys on every row (parquet needs one struct type)."""
    for part in ("extra_info",):
        keys = sorted({k for r in rows for k in r[part]})
        for r in rows:
            r[part] = {k: r[part].get(k) for k in keys}
    keys = sorted({k for r in rows for k in r["reward_model"]["ground_truth"]})
    for r in rows:
        gt = r["reward_model"]["ground_truth"]
        r["reward_model"]["ground_truth"] = {k: gt.get(k) for k in keys}
    return rows


def convert_file(inp: str | Path, out: str | Path, *, keep_data_source: bool = False) -> dict[str, Any]:
    """``deepretrieval convert``: an original parquet file → our parquet rows (atomic write)."""
    import pyarrow.parquet as pq

    from .prepare import write_parquet

    inp = Path(inp)
    if not inp.exists():
        raise FileNotFoundError(f"no such file: {inp}")
    try:
        rows = pq.read_table(inp).to_pylist()
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds
        raise ValueError(f"{inp}: not a readable parquet file ({exc})") from None
    converted = _uniform(convert_rows(rows, keep_data_source=keep_data_source))
    write_parquet(converted, out)
    return {"rows": len(converted), "tasks": dict(Counter(r["data_source"] for r in converted))}


# ---------------------------------------------------------------------------------------------
# for loaders: accept original files wherever ours are read

def is_original_row(row: Mapping[str, Any]) -> bool:
    """True for a row in the original's format: a raw prompt string (special tokens / an inline
    ``Assistant:`` turn) or a ground truth our families do not read as is."""
    try:
        prompt = row.get("prompt")
        if isinstance(prompt, str):
            return True
        msgs = [m for m in _as_list(prompt) if isinstance(m, Mapping)]
        if len(msgs) == 1:
            content = str(msgs[0].get("content", ""))
            if ("<|im_start|>" in content or "<|start_header_id|>" in content
                    or "<|begin_of_text|>" in content or "\nAssistant:" in content):
                return True
        gt = (row.get("reward_model") or {}).get("ground_truth")
        if isinstance(gt, Mapping) and (isinstance(gt.get("target"), str) or "score" in gt):
            return True
    except AttributeError:
        return False
    return False


def maybe_convert(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows as they are when they are ours; converted (:func:`convert_rows`) when any row is in the
    original's format."""
    if any(is_original_row(r) for r in rows):
        return _uniform(convert_rows(rows))
    return rows


def ensure_ours(path: str | Path, out_dir: str | Path) -> Path:
    """A parquet file usable by our trainers: ``path`` itself when its rows are ours, otherwise a
    converted copy ``<out_dir>/<stem>.converted.parquet`` (for trainers that read files, e.g. verl)."""
    import pyarrow.parquet as pq

    from .prepare import write_parquet

    path = Path(path)
    rows = pq.read_table(path).to_pylist()
    if not any(is_original_row(r) for r in rows):
        return path
    return write_parquet(_uniform(convert_rows(rows)), Path(out_dir) / f"{path.stem}.converted.parquet")
