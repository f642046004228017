"""Question-answering sets for agentic search, as task rows in verl's agentic schema.

The seven standard sets of the agentic-search literature (Search-R1, R1-Searcher, ...) have task
names ``agent_<set>``: ``agent_nq``, ``agent_triviaqa``, ``agent_popqa``, ``agent_hotpotqa``,
``agent_2wikimultihopqa``, ``agent_musique``, ``agent_bamboogle``; a bring-your-own set is
``agent_<name>``.

* Bundled (offline): NQ-open (``deepretrieval/bundled/nq_open``: split ``test`` = the 3,610
  NQ-open dev questions that DPR, Search-R1 and FlashRAG report "NQ test" on, plus the EfficientQA
  splits) and R1-Searcher's evaluation subsets of HotpotQA, 2WikiMultihopQA, MuSiQue (500 dev
  questions each, split ``dev``) and Bamboogle (125, split ``test``) in
  ``deepretrieval/bundled/multihop_qa`` (see the ``SOURCE.md`` files for sources and licenses).
* The rest (TriviaQA, PopQA, full NQ, train splits): from the user's JSONL, or downloaded from the
  Hugging Face Hub (FlashRAG's ``RUC-NLPIR/FlashRAG_datasets``, the files Search-R1 prepares its
  data from) with :func:`hub_questions`.

A question is ``{"id": str, "question": str, "answers": [str, ...]}``. :func:`qa_rows` turns
questions into the agentic family's rows (:func:`deepretrieval.tasks.agentic.agent_rows`: prompt,
``agent_name``, ``extra_info`` with ``search_index``, ``top_k``, ``max_turns``, ``tools_kwargs``).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from deepretrieval.core.beir_files import FormatError, iter_jsonl
from deepretrieval.core.bundled import BUNDLED_DIR
from deepretrieval.data.closed_world import closed_world_rows
from deepretrieval.data.download import DownloadError, _explain
from deepretrieval.tasks import agentic
from deepretrieval.tasks.base import tasks_by_name

TASK_PREFIX = "agent_"
_AGENTIC_TASKS = tasks_by_name(agentic.TASKS)
DEFAULT_TOPK = 3
DEFAULT_MAX_TURNS = 4
#: FlashRAG's collection of QA benchmarks on the Hub (``<set>/<split>.jsonl``, ``golden_answers``).
HUB_REPO = "RUC-NLPIR/FlashRAG_datasets"

_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")


@dataclass(frozen=True)
class QASet:
    name: str
    title: str
    #: bundled split → file under ``deepretrieval/bundled``
    bundled: Mapping[str, str] = field(default_factory=dict)
    #: splits of the set in :data:`HUB_REPO`
    hub_splits: tuple[str, ...] = ()

    @property
    def task_name(self) -> str:
        return TASK_PREFIX + self.name


STANDARD_SETS: dict[str, QASet] = {s.name: s for s in (
    QASet("nq", "Natural Questions (open)",
          {"test": "nq_open/NQ-open.dev.jsonl.gz",
           "efficientqa-dev": "nq_open/NQ-open.efficientqa.dev.1.1.jsonl.gz",
           "efficientqa-test": "nq_open/NQ-open.efficientqa.test.1.1.jsonl.gz"},
          ("train", "dev", "test")),
    QASet("triviaqa", "TriviaQA", {}, ("train", "dev", "test")),
    QASet("popqa", "PopQA", {}, ("test",)),
    QASet("hotpotqa", "HotpotQA", {"dev": "multihop_qa/hotpotqa_500.jsonl.gz"}, ("train", "dev")),
    QASet("2wikimultihopqa", "2WikiMultihopQA", {"dev": "multihop_qa/2wiki_500.jsonl.gz"},
          ("train", "dev")),
    QASet("musique", "MuSiQue", {"dev": "multihop_qa/musique_500.jsonl.gz"}, ("train", "dev")),
    QASet("bamboogle", "Bamboogle", {"test": "multihop_qa/bamboogle.jsonl.gz"}, ("test",)),
)}


def standard_set(name: str) -> QASet:
    if name not in STANDARD_SETS:
        raise KeyError(f"unknown QA set {name!r} (standard sets: {list(STANDARD_SETS)}; "
                       f"bring your own with a JSONL file)")
    return STANDARD_SETS[name]


def task_name(name: str) -> str:
    """``agent_<name>``; ValueError for a name that is not lower-case letters, digits and ``_``."""
    if not _NAME.match(name):
        raise ValueError(f"QA set name {name!r} must be lower-case letters, digits and '_' "
                         f"(it becomes the task name agent_<name>)")
    return TASK_PREFIX + name


# ---- loading ----------------------------------------------------------------------------------

def load_questions(path: str | Path) -> list[dict[str, Any]]:
    """Questions from JSONL (``.gz`` ok), one object per line: ``"question"`` and the gold answers
    as ``"answers"``, ``"golden_answers"`` or ``"answer"`` (a string or a list of strings), and an
    optional ``"id"`` (or ``"idx"``). FormatError naming file:line for anything else."""

    out: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for lineno, obj in iter_jsonl(Path(path), required=(), with_lines=True):
        question = obj.get("question")
        if not isinstance(question, str) or not question.strip():
            raise FormatError(f"{path}:{lineno}: 'question' must be a non-empty string")
        keys = [k for k in ("answers", "golden_answers", "answer") if k in obj]
        if not keys:
            raise FormatError(f"{path}:{lineno}: no gold answers: give 'answers' (or "
                              f"'golden_answers', 'answer') as a string or a list of strings")
        answers = obj[keys[0]]
        if isinstance(answers, str):
            answers = [answers]
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers) \
                or not any(a.strip() for a in answers):
            raise FormatError(f"{path}:{lineno}: '{keys[0]}' must be a non-empty string or a "
                              f"list of strings with at least one non-empty")
        raw_id = obj.get("id", obj.get("idx"))
        if raw_id is not None and (isinstance(raw_id, bool) or not isinstance(raw_id, (str, int))):
            raise FormatError(f"{path}:{lineno}: 'id' must be a string or an integer")
        qid = str(raw_id) if raw_id is not None else str(len(out))
        if qid in seen:
            raise FormatError(f"{path}:{lineno}: id {qid!r} repeats line {seen[qid]}")
        seen[qid] = lineno
        out.append({"id": qid, "question": question.strip(),
                    "answers": [a.strip() for a in answers if a.strip()]})
    if not out:
        raise FormatError(f"{path}: no questions")
    return out


def bundled_questions(name: str, split: str | None = None) -> list[dict[str, Any]]:
    """A bundled set's questions; ``split`` defaults to its only (or first) bundled split."""
    qa = standard_set(name)
    if not qa.bundled:
        raise ValueError(f"{qa.title} is not bundled: give your copy (prepare qa --input FILE) "
                         f"or download it (--from-hub: splits {list(qa.hub_splits)} of {HUB_REPO})")
    split = split or next(iter(qa.bundled))
    if split not in qa.bundled:
        raise ValueError(f"no bundled {split!r} split of {name!r} (bundled: {list(qa.bundled)})")
    return load_questions(BUNDLED_DIR / qa.bundled[split])


def default_split(name: str) -> str:
    """The split a set is read from when none is named: its first bundled one, else ``test`` /
    ``dev`` (what Search-R1 evaluates on)."""
    qa = standard_set(name)
    if qa.bundled:
        return next(iter(qa.bundled))
    return "test" if "test" in qa.hub_splits else "dev"


def hub_questions(name: str, split: str, *, repo_id: str = HUB_REPO, revision: str | None = None,
                  token: str | None = None, cache_dir: str | Path | None = None
                  ) -> list[dict[str, Any]]:
    """Download ``<name>/<split>.jsonl`` of a standard set from ``repo_id`` (FlashRAG's copy by
    default) with ``huggingface_hub`` and load it. Needs network access."""
    from huggingface_hub import hf_hub_download


    qa = standard_set(name)
    if repo_id == HUB_REPO and split not in qa.hub_splits:
        raise ValueError(f"{HUB_REPO} has no {split!r} split of {name!r} "
                         f"(it has {list(qa.hub_splits)})")
    filename = f"{name}/{split}.jsonl"
    try:
        path = hf_hub_download(repo_id, filename, repo_type="dataset", revision=revision,
                               token=token, cache_dir=cache_dir)
    except DownloadError:
        raise
    except Exception as exc:  # noqa: BLE001 - turned into a message the user can act on
        raise _explain(exc, repo_id, filename) from exc
    return load_questions(path)


# ---- rows -------------------------------------------------------------------------------------

PLACEHOLDER_SYSTEM = (
    "Answer the question. Think inside <think> and </think>. To look something up, write a "
    "query inside <search> and </search>; the results come back inside <information> and "
    "</information>. Search as often as you need. Give the final short answer inside <answer> "
    "and </answer>.")


def qa_rows(questions: Iterable[Mapping[str, Any]], task_name: str, index: str, split: str, *,
            topk: int = DEFAULT_TOPK, max_turns: int = DEFAULT_MAX_TURNS,
            id_prefix: str = "") -> list[dict[str, Any]]:
    """One row per question (``{"question", "answers", "id"?}``) for the agentic task
    ``task_name``, searching ``index`` with ``topk`` passages per search and at most ``max_turns``
    turns: the agentic family's rows (:func:`deepretrieval.tasks.agentic.agent_rows`)."""
    if not isinstance(index, str) or not index:
        raise ValueError("an index name is required (the index the agent searches)")
    for label, value in (("topk", topk), ("max_turns", max_turns)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be an integer >= 1 (got {value!r})")
    questions = list(questions)
    if not questions:
        raise ValueError("no questions")
    for i, q in enumerate(questions):
        if not q["answers"]:
            raise ValueError(f"question {i} ({q['question']!r}) has no gold answers")
    task = _AGENTIC_TASKS.get(task_name) or agentic.resolve(task_name, _AGENTIC_TASKS)
    if task is None:
        raise ValueError(f"{task_name!r} is not an agentic task name (agent_<set>)")
    settings = replace(agentic.settings_for(task), top_k=topk, max_turns=max_turns)
    return agentic.agent_rows(task, questions, split, search_index=index, settings=settings,
                              id_prefix=id_prefix)


def bundled_rows(task, split: str) -> list[dict[str, Any]]:
    """Bundled rows of an agentic task: the closed-world questions, or a bundled standard set
    (``test``: the set's evaluation split)."""
    dataset = task.options.get("dataset")
    if dataset == "closedworld":
        return closed_world_rows(task, split)
    qa = STANDARD_SETS.get(dataset)
    if qa is not None and qa.bundled:
        source = split if split in qa.bundled else (default_split(dataset) if split == "test" else None)
        if source is not None:
            return agentic.agent_rows(task, bundled_questions(dataset, source), split)
    raise ValueError(f"no bundled {split!r} rows for task {task.name!r}; write rows with "
                     f"`deepretrieval prepare qa ...` and pass --rows FILE.parquet")


def limit(questions: Sequence[dict[str, Any]], n: int | None) -> list[dict[str, Any]]:
    if n is None:
        return list(questions)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"limit must be an integer >= 1 (got {n!r})")
    return list(questions[:n])
