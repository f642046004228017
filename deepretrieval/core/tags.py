"""Tag scanning on model text in time linear in the text's length.

A lazy regex such as ``<answer>(.*?)</answer>`` retries its scan to the end of the text from
every unclosed open tag, so a completion of repeated open tags costs time quadratic in its length
(``"<answer>" * 16000``, 128 KB: 48 s in a reward). The scanners here give the same matches as
those regexes (leftmost first, shortest content, non-overlapping) with ``str.find``: each tag
kind is searched forward once, and an open tag without a close after it ends the scan (no later
open tag of that kind can have one either).

Pure functions (stdlib only); used by the answer parser, the agent protocol and the ``paper``
profile.
"""
from __future__ import annotations

import bisect
from collections.abc import Sequence


def tag_contents(text: str, open_tag: str, close_tag: str) -> list[str]:
    """Every ``open_tag…close_tag`` content, in order: ``re.findall(open(.*?)close, DOTALL)``."""
    out: list[str] = []
    pos = 0
    while True:
        i = text.find(open_tag, pos)
        if i < 0:
            return out
        start = i + len(open_tag)
        j = text.find(close_tag, start)
        if j < 0:
            return out
        out.append(text[start:j])
        pos = j + len(close_tag)


def first_block(text: str, names: Sequence[str]) -> tuple[str, int, int, int] | None:
    """The first complete ``<name>…</name>`` of any of ``names`` (``re.search(r"<(a|b)>(.*?)
    </\\1>", DOTALL)``): ``(name, content start, content end, block end)``, None if none."""
    closes = {n: f"</{n}>" for n in names}
    last_close = {n: text.rfind(closes[n]) for n in names}
    nxt = {n: text.find(f"<{n}>") for n in names}
    while True:
        live = [(i, n) for n, i in nxt.items() if i >= 0]
        if not live:
            return None
        i, name = min(live)
        start = i + len(name) + 2
        if last_close[name] >= start:
            j = text.find(closes[name], start)
            return name, start, j, j + len(closes[name])
        nxt[name] = -1  # no close after this open tag: none after a later one of its kind either


def strip_trailing(text: str, markers: Sequence[str]) -> tuple[str, str]:
    """``text`` without its trailing run of whitespace and ``markers`` (none of which may be a
    suffix of another): ``(kept, kept_with_the_whitespace_before_the_first_stripped_marker)``.
    Index arithmetic only, so a text of a million markers costs one pass."""
    end = len(text)
    while True:
        e = end
        while e and text[e - 1].isspace():
            e -= 1
        for marker in markers:
            if text.endswith(marker, 0, e):
                end = e - len(marker)
                break
        else:
            return text[:e], text[:end]


def fenced_objects(text: str) -> list[str]:
    """Every JSON-looking object in a code fence, in order: the matches of
    ``re.finditer(r"```(?:json)?\\s*(\\{.*?\\})\\s*```", text, re.DOTALL)`` (group 1)."""
    fence = "```"
    # every fence that can close an object: its position and the '}' before it (only whitespace
    # between); the '}' positions increase with the fence positions
    closes_e: list[int] = []
    closes_q: list[int] = []
    q = text.find(fence)
    while q >= 0:
        e = q
        while e and text[e - 1].isspace():
            e -= 1
        if e and text[e - 1] == "}":
            closes_e.append(e - 1)
            closes_q.append(q)
        q = text.find(fence, q + 1)
    out: list[str] = []
    s = text.find(fence)
    while s >= 0:
        p = s + len(fence)
        if text.startswith("json", p):
            p += 4
        while p < len(text) and text[p].isspace():
            p += 1
        if p < len(text) and text[p] == "{":
            k = bisect.bisect_right(closes_e, p)
            if k == len(closes_e):
                return out  # no '}' + fence after this '{': none after a later one either
            out.append(text[p:closes_e[k] + 1])
            s = text.find(fence, closes_q[k] + len(fence))
        else:
            s = text.find(fence, s + 1)
    return out
