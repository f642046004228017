"""Search-R1's own training rows → our agentic rows (``deepretrieval convert --from search-r1``).

Search-R1's data scripts (``scripts/data_process/nq_search.py``, ``qa_search_train_merge.py``,
``qa_search_test_merge.py``) write parquet rows with

* ``data_source``: the bare set name — ``nq``, ``triviaqa``, ``popqa``, ``hotpotqa``,
  ``2wikimultihopqa``, ``musique``, ``bamboogle`` (a merged file mixes several);
* ``prompt``: one user message, Search-R1's instruction (``<search> query </search>``,
  ``<information>``, ``<answer>``, with the example ``<answer> Beijing </answer>``) ending in
  ``Question: <question>``;
* ``reward_model.ground_truth.target``: the gold answers; ``extra_info``: ``split``, ``index``;
* FlashRAG's own columns when they survived: ``id``, ``question``, ``golden_answers``.

Those bare names already mean other things here (``nq`` / ``triviaqa``: the single-shot evidence
tasks; ``hotpotqa``: the original DeepRetrieval BEIR name), so the rows are converted, not
guessed: each becomes a row of the agentic task ``agent_<set>`` (tag protocol, our prompt), with
the question in ``extra_info.question`` (and ``extra_info.query``), the gold answers in
``reward_model.ground_truth.target``, Search-R1's ``split`` and ``index`` kept, ``query_id`` =
``<set>/<FlashRAG id>`` (FlashRAG's ids restart per set in merged files). The converted rows
score as Search-R1's ``compute_score_em`` scores the originals: exact match (SQuAD normalisation)
of the last ``<answer>`` — Search-R1's reward manager decodes prompt + response and skips the
prompt's example answer; ours is given the response only. :func:`unconverted` is what ``train``
and ``eval`` check so that such rows are refused, with :data:`CONVERT_COMMAND`, instead of being
scored as something else.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from deepretrieval.data.rows import read_parquet_file, write_parquet
from deepretrieval.tasks import agentic

#: Search-R1's ``data_source`` names (its ``main_ppo._select_rm_score_fn`` scores exactly these).
SETS = ("nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle")
#: The index converted rows search unless told otherwise (Search-R1 searches its wiki-18 corpus).
DEFAULT_INDEX = "wiki18"
CONVERT_COMMAND = "deepretrieval convert --from search-r1 IN.parquet --out DIR"
_QUESTION_MARK = "Question:"


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    return value


def _single_user_message(row: Mapping[str, Any]) -> str | None:
    prompt = _plain(row.get("prompt"))
    if not isinstance(prompt, list) or len(prompt) != 1 or not isinstance(prompt[0], Mapping):
        return None
    if prompt[0].get("role") != "user" or not isinstance(prompt[0].get("content"), str):
        return None
    return prompt[0]["content"]


def is_search_r1_row(row: Mapping[str, Any]) -> bool:
    """A row as Search-R1's scripts write it: a bare set name, one user message holding the
    search-tag instruction, a ground truth with ``target``."""
    if row.get("data_source") not in SETS:
        return False
    content = _single_user_message(row)
    if content is None or "<search>" not in content or "<answer>" not in content:
        return False
    gt = (row.get("reward_model") or {}).get("ground_truth")
    return isinstance(gt, Mapping) and "target" in gt


def unconverted(rows: Sequence[Mapping[str, Any]]) -> int:
    """How many of ``rows`` are Search-R1 rows that were not converted."""
    return sum(1 for r in rows if is_search_r1_row(r))


def refusal(source: str, count: int, total: int) -> str:
    """The message ``train`` / ``eval`` print for unconverted Search-R1 rows."""
    return (f"{source}: {count} of {total} rows are Search-R1's own rows (data_source a bare set "
            f"name such as 'nq' or 'hotpotqa', one user message with Search-R1's <search> prompt); "
            f"here those names mean other tasks, so they would be scored wrong. Convert them "
            f"first: {CONVERT_COMMAND.replace('IN.parquet', source)}")


def check_file(path: str | Path, sample: int = 64) -> None:
    """Raise (:func:`refusal`) when the first ``sample`` rows of a parquet file hold unconverted
    Search-R1 rows — what ``train`` checks before anything starts (a cheap look: Search-R1's files
    are Search-R1's throughout)."""
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds
        raise ValueError(f"{path}: not a readable parquet file ({exc})") from None
    wanted = [c for c in ("data_source", "prompt", "reward_model") if c in parquet.schema_arrow.names]
    if "data_source" not in wanted:
        return
    batch = next(parquet.iter_batches(batch_size=sample, columns=wanted), None)
    rows = batch.to_pylist() if batch is not None else []
    count = unconverted(rows)
    if count:
        raise ValueError(refusal(str(path), count, len(rows)).replace(
            f"{count} of {len(rows)} rows are", f"{count} of the first {len(rows)} rows are"))


def question_of(row: Mapping[str, Any]) -> str:
    """The question: FlashRAG's ``question`` column when present, else the text after the
    prompt's last ``Question:``."""
    question = row.get("question")
    if isinstance(question, str) and question.strip():
        return question.strip()
    content = _single_user_message(row) or ""
    if _QUESTION_MARK not in content:
        raise ValueError("no question: neither a 'question' column nor 'Question:' in the prompt")
    question = content.rsplit(_QUESTION_MARK, 1)[1].strip()
    if not question:
        raise ValueError("the prompt's 'Question:' is empty")
    return question


def answers_of(row: Mapping[str, Any]) -> list[str]:
    gt = (row.get("reward_model") or {}).get("ground_truth") or {}
    target = _plain(gt.get("target"))
    if isinstance(target, str):
        target = [target]
    if not isinstance(target, list):
        raise ValueError(f"ground_truth.target is {type(target).__name__}, not a list of answers")
    answers = [str(a) for a in target if a is not None and str(a).strip()]
    if not answers:
        raise ValueError("no gold answers in reward_model.ground_truth.target")
    return answers


def convert_row(row: Mapping[str, Any], number: int, index: str) -> dict[str, Any]:
    """One Search-R1 row → one row of ``agent_<set>`` (see the module docstring)."""
    data_source = row.get("data_source")
    if data_source not in SETS:
        raise ValueError(f"data_source {data_source!r} is not one of Search-R1's sets {list(SETS)}")
    if _single_user_message(row) is None:
        raise ValueError("the prompt is not one user message (Search-R1's layout)")
    extra = dict(_plain(row.get("extra_info")) or {})
    split = str(extra.get("split") or "train")
    source_index = extra.get("index", number)
    question = question_of(row)
    # FlashRAG ids restart per set ("train_0" in nq and in hotpotqa): the set makes them unique
    qid = row.get("id")
    qid = f"{data_source}/{qid}" if qid not in (None, "") else f"{data_source}/{split}_{source_index}"
    task = agentic.resolve(f"searchR1_{data_source}", {t.name: t for t in agentic.TASKS})
    (out,) = agentic.agent_rows(task, [{"question": question, "answers": answers_of(row), "id": qid}],
                                split, search_index=index)
    out["extra_info"].update(question=question, index=source_index)
    return out


def convert_rows(rows: Sequence[Mapping[str, Any]], index: str = DEFAULT_INDEX) -> list[dict[str, Any]]:
    if not isinstance(index, str) or not index:
        raise ValueError("an index name is required (the index the converted rows search)")
    out = []
    for i, row in enumerate(rows):
        try:
            out.append(convert_row(row, i, index))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"row {i}: {exc}") from None
    return out


def convert_file(inp: str | Path, out_dir: str | Path, index: str = DEFAULT_INDEX) -> dict[str, Any]:
    """``deepretrieval convert --from search-r1 IN.parquet --out DIR``: writes
    ``DIR/<IN's name>`` (atomic); returns the row count, the output path and rows per task."""
    inp = Path(inp)
    rows = read_parquet_file(inp)
    if not rows:
        raise ValueError(f"{inp}: no rows")
    converted = convert_rows(rows, index)
    path = write_parquet(converted, Path(out_dir) / inp.name)
    return {"rows": len(converted), "out": str(path),
            "tasks": dict(Counter(r["data_source"] for r in converted))}
