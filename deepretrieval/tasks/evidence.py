"""Evidence seeking (NQ / TriviaQA / SQuAD, open-domain): write a query that retrieves a passage
containing the answer; reward by the rank of the first answer-bearing passage.

* :func:`has_answer`: DPR / pyserini ``has_answers`` semantics (:mod:`deepretrieval.core.dpr_match`):
  an answer matches a passage when its token sequence (NFD-normalised, lower-cased, articles and
  punctuation kept as tokens) occurs as a contiguous run of the passage's tokens, so "art" does
  not match "party" and "The Who" does not match "who is there". Answers with no tokens (empty
  or whitespace) are ignored here (pyserini would let them match every passage; the ``paper``
  profile keeps that). :func:`normalize_answer` (lowercase, acronyms joined, punctuation and
  articles dropped) is a display/comparison helper only; it is not used for matching.
* The search returns the top ``depth`` passages with their text (``return_text=True``; default
  depth 3,000 in training and validation, as in the paper).
* Metrics (numbers only, the same keys for every row): ``first_hit_rank`` (1-based rank of the
  first answer-bearing passage; **depth + 1 when none of the ``depth`` passages has an answer**,
  so the ``evidence`` reward table — tiers rank <= 5, 20, 50, 100, 1000, 3000 — gives it the
  ``otherwise`` score, -3.5), ``hit@1``, ``hit@5``, ``hit@20``, ``hit@100``, ``hit@1000`` and
  ``hit`` (a hit anywhere in the searched depth). Average the ``hit@k`` values, not
  ``first_hit_rank``, when summarising (format failures report 0 for every metric).

Passage corpora are user-supplied (BEIR-style JSONL → ``deepretrieval index`` or
``index-dense``); the task's default index name is ``wikipedia``, and each row may name its own
with ``extra_info.search_index`` (``prepare nq --index NAME`` writes it).
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from deepretrieval.core import dpr_match
from deepretrieval.core.beir_files import FormatError, iter_jsonl
from deepretrieval.core.bundled import bundled_path
from deepretrieval.core.tables import RewardTable
from deepretrieval.tasks.base import Family, SearchPlan, Task

#: NQ / TriviaQA / SQuAD (the paper's table): rank of the first answer-bearing passage.
TABLE = RewardTable(
    metric="first_hit_rank", compare="<=",
    tiers=((5, 5), (20, 4), (50, 2), (100, 1), (1000, 0.5), (3000, 0.1)),
    otherwise=-3.5, format_ok=1, format_bad=-4, error=-4)
TABLES = {"evidence": TABLE}

_ARTICLES = frozenset({"a", "an", "the"})
_NON_WORD = re.compile(r"[\W_]+")  # punctuation, symbols, whitespace, underscore → boundary
_ACRONYM = re.compile(r"(?<!\w)(?:[^\W\d_]\.){2,}")  # U.S.A. → USA, e.g. → eg
DEFAULT_DEPTH = 3000
HIT_KS = (1, 5, 20, 100, 1000)


def answer_tokens(text: str) -> list[str]:
    """Normalised tokens of ``text`` (see :func:`normalize_answer`)."""
    text = unicodedata.normalize("NFC", str(text)).lower()
    text = _ACRONYM.sub(lambda m: m.group(0).replace(".", ""), text)
    return [tok for tok in _NON_WORD.sub(" ", text).split() if tok not in _ARTICLES]


def normalize_answer(text: str) -> str:
    """Lowercase; join dotted acronyms; punctuation/symbols → spaces; drop a/an/the; collapse
    whitespace."""
    return " ".join(answer_tokens(text))


def _answer_list(answers: Iterable[str]) -> list[str]:
    # answers without any token ("", "  ") would match every passage: ignored here
    return dpr_match.answer_keys(answers)


def has_answer(passage: str, answers: Iterable[str]) -> bool:
    """Does ``passage`` contain one of ``answers`` (DPR ``has_answers`` token match)?"""
    keys = _answer_list(answers)
    if not keys or not isinstance(passage, str):
        return False
    return dpr_match.has_answer(passage, keys)


def first_answer_rank(passages: Sequence[str | None], answers: Iterable[str],
                      depth: int | None = None) -> int | None:
    """1-based rank of the first passage containing an answer, within ``depth``; None if none."""
    keys = _answer_list(answers)
    if not keys:
        return None
    for rank, passage in enumerate(passages if depth is None else passages[:depth], start=1):
        if isinstance(passage, str) and dpr_match.has_answer(passage, keys):
            return rank
    return None


def answers_from_ground_truth(ground_truth: Any) -> list[str]:
    """``{"target": [answers]}`` (or a bare list / string) → answer strings. Accepts lists,
    tuples and numpy arrays (as read back from parquet)."""
    if ground_truth is None:
        return []
    target = ground_truth.get("target") if hasattr(ground_truth, "get") else ground_truth
    if target is None:
        return []
    if isinstance(target, str):
        target = [target]
    return [str(a) for a in list(target) if a is not None]


def evidence_metrics(rank: int | None, depth: int) -> dict[str, float]:
    """The family's metrics for a first-hit rank (None: no hit within ``depth``)."""
    out: dict[str, float] = {"first_hit_rank": float(rank if rank is not None else depth + 1)}
    for k in HIT_KS:
        out[f"hit@{k}"] = 1.0 if rank is not None and rank <= k else 0.0
    out["hit"] = 1.0 if rank is not None else 0.0
    return out


class EvidenceFamily(Family):
    name = "evidence"

    def metric_keys(self, task: Task) -> list[str]:
        return ["first_hit_rank"] + [f"hit@{k}" for k in HIT_KS] + ["hit"]

    def plan(self, task, value, ground_truth, extra_info, mode) -> SearchPlan:
        # the gold answers travel with the search: the index ranks its own passages (search
        # option ``answers``) and no passage text comes back
        return SearchPlan(index=extra_info.get("search_index") or task.index, query=value,
                          k=task.depth(mode),
                          options={"answers": _answer_list(answers_from_ground_truth(ground_truth))})

    def score(self, task, plan, result, ground_truth, extra_info, mode) -> dict[str, float]:
        depth = task.depth(mode)
        if "first_answer_rank" not in result.info:
            raise ValueError(f"index {plan.index!r} returned no first_answer_rank for the "
                             f"'answers' option")
        rank = result.info["first_answer_rank"]
        return evidence_metrics(rank if rank is not None and rank <= depth else None, depth)

    def empty_metrics(self, task):
        """Nothing searched (bad format): no hit, as if nothing was found within the depth."""
        return evidence_metrics(None, task.train_depth)


EVIDENCE = EvidenceFamily()

_SYSTEM = "You are a helpful assistant that writes search queries for finding evidence."
_INSTRUCTION = (
    "Write a search query for a search engine over {corpus} passages that retrieves a passage "
    "containing the answer to the question below. The answer itself is not needed, only the "
    "query.\n\nQuestion: {{query}}")

_DATASETS = {
    "nq": ("Natural Questions (open)", "Wikipedia"),
    "triviaqa": ("TriviaQA (open)", "Wikipedia"),
    "squad": ("SQuAD (open)", "Wikipedia"),
}

_VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("", {}), ("_no_reason", {"reasoning": False, "prefill": "<answer>{\"query\": \""}))

TASKS = [
    Task(name=_name + _suffix, family=EVIDENCE, index="wikipedia", system=_SYSTEM,
         instruction=_INSTRUCTION.format(corpus=_corpus), reward=TABLE,
         train_depth=DEFAULT_DEPTH, val_depth=DEFAULT_DEPTH,
         description=f"{_title}: rank of the first answer-bearing passage in the top 3000"
                     + (", answer-only" if _suffix else ""), **_extra)
    for _name, (_title, _corpus) in _DATASETS.items()
    for _suffix, _extra in _VARIANTS]


# ---------------------------------------------------------------------------------------------
# data: NQ-open style JSONL ({"question", "answer": [...]}) → task rows

BUNDLED_NQ = bundled_path("nq_open")
NQ_SPLITS = {"dev": "NQ-open.dev.jsonl.gz",
             "efficientqa-dev": "NQ-open.efficientqa.dev.1.1.jsonl.gz",
             "efficientqa-test": "NQ-open.efficientqa.test.1.1.jsonl.gz"}


def load_qa_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read question/answer JSONL (``.gz`` ok): ``{"question": str, "answer": [str, ...]}`` per
    line (``answers`` and a single string answer are accepted too)."""
    out = []
    for lineno, obj in iter_jsonl(Path(path), required=(), with_lines=True):
        question = obj.get("question")
        answers = obj.get("answer", obj.get("answers"))
        if isinstance(answers, str):
            answers = [answers]
        if not isinstance(question, str) or not question.strip() or not isinstance(answers, list) \
                or not answers or not all(isinstance(a, str) for a in answers):
            raise FormatError(f"{path}:{lineno}: expected {{\"question\": str, \"answer\": "
                              f"[str, ...]}}")
        out.append({"question": question.strip(), "answers": answers})
    return out


def nq_examples(split: str = "dev") -> list[dict[str, Any]]:
    """The bundled NQ-open questions of a split (dev 3,610; efficientqa-dev 1,800;
    efficientqa-test 1,769)."""
    if split not in NQ_SPLITS:
        raise ValueError(f"unknown NQ-open split {split!r} (bundled: {list(NQ_SPLITS)})")
    return load_qa_jsonl(BUNDLED_NQ / NQ_SPLITS[split])


def qa_rows(task: Task, examples: Sequence[Mapping[str, Any]], split: str,
            search_index: str | None = None, id_prefix: str = "") -> list[dict[str, Any]]:
    """One task row per question: ``ground_truth.target`` = the answers, ``extra_info.query`` =
    the question (the original-query baseline)."""
    rows = []
    for i, ex in enumerate(examples):
        extra: dict[str, Any] = {"query_id": f"{id_prefix}{i}", "query": ex["question"]}
        if search_index:
            extra["search_index"] = search_index
        rows.append(task.row(split, i, {"query": ex["question"]},
                             {"target": list(ex["answers"])}, **extra))
    return rows


def bundled_rows(task: Task, split: str) -> list[dict[str, Any]]:
    """NQ tasks: the bundled NQ-open questions ("test" = NQ-open dev, the 3,610 questions DPR and
    the paper report NQ test results on), searching the task's default index."""
    if not task.name.startswith("nq"):
        raise ValueError(f"no bundled rows for task {task.name!r}; write rows with "
                         f"`deepretrieval prepare {task.name.split('_')[0]} --input ...`")
    return qa_rows(task, nq_examples("dev" if split == "test" else split), split)
