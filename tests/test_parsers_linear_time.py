"""Parsers of model text are linear in its length (issue 29 item 6).

Lazy ``<tag>(.*?)</tag>`` regexes over repeated open tags cost quadratic time: ``"<answer>" *
16000`` (128 KB) took 48 s in ``compute_score``, 1 MB was projected at ~37 min. The scanners in
``core/tags.py`` replace them; this file checks (1) that they give exactly the regexes' matches on
generated tag soups, and (2) that every parse function and the reward on repeated open tags up to
1 MB take time within a bounded RATIO of a 1 KB input's time (linear: ratio ≈ size ratio;
quadratic: size ratio squared). Sizes grow 1 KB → 16 KB → 128 KB → 1 MB and the test stops at the
first size over its bound, so quadratic code fails in seconds instead of hanging.
"""
from __future__ import annotations

import random
import re
import time

import pytest

from deepretrieval.core import agent_protocol as P
from deepretrieval.core import answer as A
from deepretrieval.core.tags import fenced_objects, first_block, strip_trailing, tag_contents
from deepretrieval.rewards import compute_score

# ---- (1) the same matches as the regexes they replace ------------------------------------------

PIECES = ["<answer>", "</answer>", "<search>", "</search>", "<record>", "</record>", "<tool_call>",
          "</tool_call>", "<information>", "```", "```json", "{", "}", " ", "\n", "x", "Paris",
          "<answer", "answer>", "</s>", "<|im_end|>", "\t", '{"query": "a"}', "json"]


def soups(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(PIECES) for _ in range(rng.randint(0, 40))) for _ in range(n)]


def _old_strip(text: str, markers, rstrip_each: bool) -> str:
    """The two stripping loops the module had (answer.py rstripped, agent_protocol did not)."""
    if rstrip_each:
        text = text.rstrip()
    changed = True
    while changed:
        changed = False
        stripped = text if rstrip_each else text.rstrip()
        for marker in markers:
            if stripped.endswith(marker):
                text = stripped[: -len(marker)]
                text = text.rstrip() if rstrip_each else text
                changed = True
                break
    return text


def test_scanners_match_the_regexes_they_replace():
    fence = re.compile(r"```(?:json)?\s*(\{.*?\})\s*```", re.DOTALL)
    action = re.compile(r"<(search|answer)>(.*?)</\1>", re.DOTALL)
    for text in soups(29, 4000):
        for tag in ("answer", "record", "tool_call", "search"):
            assert tag_contents(text, f"<{tag}>", f"</{tag}>") == re.findall(
                f"<{tag}>(.*?)</{tag}>", text, re.DOTALL), text
        m = action.search(text)
        got = first_block(text, ("search", "answer"))
        assert got == (None if m is None else (m.group(1), m.start(2), m.end(2), m.end())), text
        assert fenced_objects(text) == [x.group(1) for x in fence.finditer(text)], text
        assert strip_trailing(text, A.END_MARKERS)[0] == _old_strip(text, A.END_MARKERS, True)
        assert strip_trailing(text, A.END_MARKERS)[1] == _old_strip(text, A.END_MARKERS, False)


# ---- (2) time linear in the input --------------------------------------------------------------

UNITS = ["<answer>", "<answer>x", "<search>", "<search>q", "<record>", "<tool_call>", "```json {",
         "``` {", "<information>", "<tool_response>", "</s>", "<|im_end|> ", '{"query":[', "<think>",
         "<answer><search>", "<criteria>"]
SIZES = [1_000, 16_000, 128_000, 1_000_000]
#: allowed time ratio per size ratio (linear ≈ 1; the slack covers a shared, loaded machine and
#: fixed per-call costs; quadratic would be the size ratio itself: 16 … 1000)
SLACK = 12.0


def _seconds(fn, text: str, at_least: float) -> float:
    """Best per-call time of a few rounds, each repeated until it lasts ``at_least`` seconds."""
    best = float("inf")
    for _ in range(3):
        n, start = 0, time.perf_counter()
        while True:
            fn(text)
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= at_least:
                break
        best = min(best, elapsed / n)
    return best


def _agentic(text):
    return compute_score("agent_nq", text, {"target": ["Paris"]}, {})


def _paper_pubmed(text):
    return compute_score("nq_serini", "<|im_start|>assistant\n" + text, {"target": ["Paris"]},
                         {"profile": "paper"})


FUNCTIONS = {
    "final_answer": P.final_answer, "parse_tag_turn": P.parse_tag_turn,
    "parse_tool_turn": P.parse_tool_turn, "records": P.records,
    "trajectory_stats": P.trajectory_stats,
    "parse_answer": A.parse_answer, "extract_answer_lenient": A.extract_answer_lenient,
    "compute_score agent_nq": _agentic,
}


def _check_linear(name, fn, unit):
    base = None
    for size in SIZES:
        text = unit * max(1, size // len(unit))
        t = _seconds(fn, text, 0.02 if size == SIZES[0] else 0.0)
        if base is None:
            base = t
            continue
        bound = SLACK * size / SIZES[0]
        assert t / base <= bound, (f"{name} on {unit!r} x {len(text) // len(unit)}: "
                                   f"{t:.4f} s vs {base:.6f} s at 1 KB (ratio {t / base:.0f}, "
                                   f"bound {bound:.0f})")


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_parsers_are_linear_in_repeated_open_tags(name):
    for unit in UNITS:
        _check_linear(name, FUNCTIONS[name], unit)


def test_paper_profile_is_linear_in_repeated_open_tags():
    for unit in ("<answer>", "<answer>x", "</s>"):
        _check_linear("paper nq_serini", _paper_pubmed, unit)
