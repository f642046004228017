"""The original DeepRetrieval rows, as published, converted to ours: raw prompt strings with the
model's special tokens become chat messages, original ``data_source`` names and ground-truth shapes
become ours (:mod:`deepretrieval.tasks.original` holds the name grammar and the resolver).

Conversion needs the task of each row's ``data_source``: functions take ``get_task`` (the
catalog's :func:`deepretrieval.catalog.get_task`).

The original's own prompt is kept too: ``extra_info.original_prompt`` holds the row's raw prompt
string verbatim (the text the original trainer tokenized, ``prompt[0]["content"]``, with no chat
template around it), so a released DeepRetrieval checkpoint can be evaluated on the prompt it was
trained on (:func:`original_prompt`; ``deepretrieval eval --prompt-format``, docs/profiles.md)."""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from deepretrieval.core.answer import ANSWER_OPEN, THINK_OPEN
from deepretrieval.data.rows import read_parquet_file, write_parquet
from deepretrieval.tasks.base import Task
from deepretrieval.tasks.original import (
    OriginalTask,
    _as_list,
    normalize_extra_info,
    normalize_ground_truth,
    parse_name,
)

GetTask = Callable[[str], Task]


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
    if len(msgs) == 1 and _is_templated(str(msgs[0].get("content", ""))):
        return split_raw_prompt(str(msgs[0].get("content", "")))
    return [{"role": str(m.get("role", "user")), "content": str(m.get("content", ""))} for m in msgs], ""


ORIGINAL_PROMPT = "original_prompt"  # extra_info key: the original's raw prompt string, verbatim
ORIGINAL_TARGET = "original_target"  # extra_info key: the original's one-id target string (SciFact rows)


def raw_prompt(prompt: Any) -> str | None:
    """The original's raw prompt string of a row's ``prompt`` (a string, or one user message
    holding a pre-templated string), verbatim; None when the prompt is chat messages of ours."""
    if isinstance(prompt, str):
        return prompt
    msgs = [m for m in _as_list(prompt) if isinstance(m, Mapping)]
    if len(msgs) == 1 and _is_templated(str(msgs[0].get("content", ""))):
        return str(msgs[0]["content"])
    return None


def _is_templated(content: str) -> bool:
    return bool("<|im_start|>" in content or "<|start_header_id|>" in content
                or "<|begin_of_text|>" in content or re.search(r"\nAssistant:", content))


def original_prompt(row: Mapping[str, Any]) -> str | None:
    """The original raw prompt a (converted) row carries in ``extra_info.original_prompt``, or None."""
    value = (row.get("extra_info") or {}).get(ORIGINAL_PROMPT)
    return value if isinstance(value, str) and value else None


_QUERY_COLUMNS = ("query", "input", "question", "claim")


def convert_row(row: Mapping[str, Any], get_task: GetTask, index: int | None = None, *,
                keep_data_source: bool = False) -> dict[str, Any]:
    """One original row → our row (chat-message prompt, our ground truth, extra_info with
    ``split``, ``prefill``, ``query``, ``pub_date``, ``db_id`` where known, and the raw prompt
    verbatim in ``original_prompt``)."""
    data_source = str(row.get("data_source", ""))
    name = parse_name(data_source)
    if name is None:
        try:
            task = get_task(data_source)  # already one of ours
        except KeyError:
            raise ValueError(f"unknown data_source {data_source!r}: not one of the original's names "
                             f"nor a defined task") from None
        family_key = task.family.name if task.family.name in ("beir", "sql") else "other"
        canonical = task.name
    else:
        task = get_task(data_source)
        family_key = name.family
        # names spelled the same in both projects (pubmed, ctgov, triviaqa, squad) are our tasks
        canonical = task.canonical if isinstance(task, OriginalTask) else task.name
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
    raw = raw_prompt(row.get("prompt"))
    if raw is not None:
        extra[ORIGINAL_PROMPT] = raw
    raw_gt = reward_model.get("ground_truth") if isinstance(reward_model, Mapping) else None
    if isinstance(raw_gt, Mapping) and isinstance(raw_gt.get("target"), str):
        # one id per judgment line (SciFact layout): the paper profile compares against it as is
        extra[ORIGINAL_TARGET] = raw_gt["target"]
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


def convert_rows(rows, get_task: GetTask, *, keep_data_source: bool = False) -> list[dict[str, Any]]:
    out = []
    for i, row in enumerate(rows):
        try:
            out.append(convert_row(row, get_task, i, keep_data_source=keep_data_source))
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


def convert_file(inp: str | Path, out: str | Path, get_task: GetTask, *,
                 keep_data_source: bool = False) -> dict[str, Any]:
    """``deepretrieval convert``: an original parquet file → our parquet rows (atomic write)."""
    inp = Path(inp)
    rows = read_parquet_file(inp)
    converted = _uniform(convert_rows(rows, get_task, keep_data_source=keep_data_source))
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


def maybe_convert(rows: list[dict[str, Any]], get_task: GetTask) -> list[dict[str, Any]]:
    """Rows as they are when they are ours; converted (:func:`convert_rows`) when any row is in the
    original's format."""
    if any(is_original_row(r) for r in rows):
        return _uniform(convert_rows(rows, get_task))
    return rows


def ensure_ours(path: str | Path, out_dir: str | Path, get_task: GetTask) -> Path:
    """A parquet file usable by our trainers: ``path`` itself when its rows are ours, otherwise a
    converted copy ``<out_dir>/<stem>.converted.parquet`` (for trainers that read files, e.g. verl)."""
    path = Path(path)
    rows = pq.read_table(path).to_pylist()
    if not any(is_original_row(r) for r in rows):
        return path
    return write_parquet(_uniform(convert_rows(rows, get_task)), Path(out_dir) / f"{path.stem}.converted.parquet")
