"""The output contract: ``<think>…</think><answer>{"query": …}</answer>``.

Two strict checks for training (reasoning and answer-only) and one lenient extractor for
evaluating or serving models that were never trained on the contract.  Every function here
accepts any string and never raises.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from deepretrieval.core.tags import fenced_objects, strip_trailing

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"

#: End-of-turn markers a decoder may leave behind the answer; they are not "text after </answer>".
END_MARKERS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>", "<|end|>", "<end_of_turn>")

#: Longest answer value accepted (characters). Longer payloads are format errors, never searched.
MAX_VALUE_CHARS = 8192
#: How many ``{`` (the last ones) the lenient extractor tries as the start of a JSON answer.
MAX_JSON_STARTS = 256


@dataclass(frozen=True)
class ParsedAnswer:
    """Verdict of a parse. ``ok`` is the format verdict; ``value`` the query (or SQL) when ok."""

    ok: bool
    value: str | None = None
    reasoning: str | None = None
    error: str | None = None


def _strip_end_markers(text: str) -> str:
    return strip_trailing(text, END_MARKERS)[0]


def _payload_value(payload: str, key: str,
                   lenient: bool = False) -> tuple[str | None, str | None]:
    """Return (value, error) for the JSON payload inside <answer>…</answer>."""
    payload = payload.strip()
    if not payload:
        return None, "empty answer"
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        return None, "answer is not valid JSON"
    if not isinstance(data, dict):
        return None, "answer JSON is not an object"
    if key not in data:
        return None, f"answer JSON has no {key!r} key"
    value = data[key]
    if not isinstance(value, str):
        return None, f"{key!r} is not a string"
    value = value.strip()
    if not value:
        return None, f"{key!r} is empty"
    if len(value) > MAX_VALUE_CHARS:
        return None, f"{key!r} is longer than {MAX_VALUE_CHARS} characters"
    if not _encodable(value):
        if lenient:  # a JSON "\\ud800" escape decodes to a lone surrogate
            return _replace_surrogates(value), None
        return None, f"{key!r} is not valid Unicode text (it holds a lone surrogate)"
    return value, None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _replace_surrogates(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (lenient paths only)."""
    if _encodable(text):
        return text
    return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)


def parse_answer(text: object, key: str = "query", *, reasoning: bool = True,
                 think_prefilled: bool = False) -> ParsedAnswer:
    """Strict format check used for training rewards.

    reasoning=True: ``<think>``, ``</think>``, ``<answer>``, ``</answer>`` each exactly once and in
    that order (``think_prefilled``: the prompt ended with ``<think>``, so the completion must not
    open it again). reasoning=False: only the answer tags, exactly once, and no think tags at all.
    Text before the answer (reasoning variant: before ``<think>``) is tolerated only when it is
    whitespace; after ``</answer>`` only whitespace and end-of-turn markers are allowed.
    """
    if not isinstance(text, str):
        return ParsedAnswer(False, error="completion is not a string")
    if think_prefilled and reasoning:
        text = THINK_OPEN + text
    body = _strip_end_markers(text)
    counts = {tag: body.count(tag) for tag in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)}
    required = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE) if reasoning else (ANSWER_OPEN, ANSWER_CLOSE)
    for tag in required:
        if counts[tag] != 1:
            return ParsedAnswer(False, error=f"{tag} appears {counts[tag]} times (expected 1)")
    if not reasoning:
        for tag in (THINK_OPEN, THINK_CLOSE):
            if counts[tag]:
                return ParsedAnswer(False, error=f"{tag} is not allowed in the answer-only format")
    positions = [body.find(tag) for tag in required]
    if positions != sorted(positions):
        return ParsedAnswer(False, error="tags are out of order")
    if body[: positions[0]].strip():
        return ParsedAnswer(False, error=f"text before {required[0]}")
    a_open, a_close = body.find(ANSWER_OPEN), body.find(ANSWER_CLOSE)
    if body[a_close + len(ANSWER_CLOSE):].strip():
        return ParsedAnswer(False, error="text after </answer>")
    thought = None
    if reasoning:
        t_open, t_close = body.find(THINK_OPEN), body.find(THINK_CLOSE)
        thought = body[t_open + len(THINK_OPEN): t_close].strip()
        if body[t_close + len(THINK_CLOSE): a_open].strip():
            return ParsedAnswer(False, reasoning=thought, error="text between </think> and <answer>")
    value, error = _payload_value(body[a_open + len(ANSWER_OPEN): a_close], key)
    if error:
        return ParsedAnswer(False, reasoning=thought, error=error)
    return ParsedAnswer(True, value=value, reasoning=thought)


def extract_answer_lenient(text: object, key: str = "query") -> str | None:
    """Best-effort extraction for evaluating and serving any model.

    Tries, in order: the last ``<answer>…</answer>`` block (or an unclosed last ``<answer>``) as
    JSON or as plain text, a fenced JSON block, the last JSON object holding ``key``, and finally
    the whole completion without tags. Returns None when nothing usable is left.
    """
    if not isinstance(text, str):
        return None
    text = _strip_end_markers(text)
    if len(text) > 16 * MAX_VALUE_CHARS:
        text = text[-16 * MAX_VALUE_CHARS:]
    # decoded JSON may hold lone surrogates ("\\ud800"): replace them so the value can be sent
    text = _replace_surrogates(text)
    if len(text) > 16 * MAX_VALUE_CHARS:
        text = text[-16 * MAX_VALUE_CHARS:]
    candidates: list[str] = []
    start = text.rfind(ANSWER_OPEN)
    if start >= 0:
        end = text.find(ANSWER_CLOSE, start)
        candidates.append(text[start + len(ANSWER_OPEN): end if end >= 0 else len(text)])
    candidates += reversed(fenced_objects(text))
    for candidate in candidates:
        value, _ = _payload_value(candidate, key, lenient=True)
        if value is not None:
            return value
    decoder = json.JSONDecoder()
    # the last MAX_JSON_STARTS '{' only: each failed decode can scan far (deep nesting), so
    # trying every '{' of a brace-heavy text would cost time quadratic in its length
    for match in list(re.finditer(r"\{", text))[::-1][:MAX_JSON_STARTS]:
        try:
            obj, _ = decoder.raw_decode(text, match.start())
        except (ValueError, RecursionError):
            continue
        if isinstance(obj, dict) and isinstance(obj.get(key), str) and obj[key].strip():
            return _replace_surrogates(obj[key].strip()[:MAX_VALUE_CHARS])
    for candidate in candidates:
        plain = candidate.strip().strip("`").strip()
        if plain and "{" not in plain:
            return plain[:MAX_VALUE_CHARS]
    if THINK_CLOSE in text:
        text = text.rsplit(THINK_CLOSE, 1)[1]
    plain = re.sub(r"</?(think|answer)>", " ", text).strip()
    return plain[:MAX_VALUE_CHARS] or None


def extract_reasoning_lenient(text: str) -> str | None:
    """The text inside the first ``<think>…</think>`` (or before a lone ``</think>``), if any."""
    start = text.find(THINK_OPEN)
    end = text.find(THINK_CLOSE, start + 1 if start >= 0 else 0)
    if end < 0:
        return None
    return text[(start + len(THINK_OPEN)) if start >= 0 else 0: end].strip() or None


def salvage_truncated_value(value: str | None, key: str) -> str | None:
    """A lenient answer that is still a broken JSON object (``{"query": "bone cells`` cut off by
    the token limit) → the string value it started, if any; other values unchanged."""
    if not value or not value.lstrip().startswith("{"):
        return value
    match = re.search(r'"%s"\s*:\s*"((?:[^"\\]|\\.)*)' % re.escape(key), value)
    if not match:
        return None
    return match.group(1).strip() or None
