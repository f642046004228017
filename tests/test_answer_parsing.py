"""The output contract: strict (training) and lenient (serving) parsing."""
import pytest

from deepretrieval.core.answer import MAX_VALUE_CHARS, extract_answer_lenient, parse_answer

Q = '{"query": "vitamin D AND cancer"}'

# (name, completion, kwargs, ok, value or error fragment)
CASES = [
    ("valid", f"<think>plan</think>\n<answer>{Q}</answer>", {}, True, "vitamin D AND cancer"),
    ("valid, leading/trailing whitespace", f"  \n<think>x</think> <answer> {Q} </answer>\n", {}, True,
     "vitamin D AND cancer"),
    ("valid, end-of-turn marker", f"<think>x</think><answer>{Q}</answer><|im_end|>", {}, True,
     "vitamin D AND cancer"),
    ("prefilled <think>", f"plan</think><answer>{Q}</answer>", {"think_prefilled": True}, True,
     "vitamin D AND cancer"),
    ("prefilled <think> opened again", f"<think>plan</think><answer>{Q}</answer>",
     {"think_prefilled": True}, False, "<think> appears 2 times"),
    ("missing <think>", f"plan</think><answer>{Q}</answer>", {}, False, "<think> appears 0 times"),
    ("missing </answer>", f"<think>x</think><answer>{Q}", {}, False, "</answer> appears 0 times"),
    ("duplicated answer", f"<think>x</think><answer>{Q}</answer><answer>{Q}</answer>", {}, False,
     "<answer> appears 2 times"),
    ("duplicated think", f"<think>x</think><think>y</think><answer>{Q}</answer>", {}, False,
     "<think> appears 2 times"),
    ("reordered", f"<answer>{Q}</answer><think>x</think>", {}, False, "out of order"),
    ("answer nested in think", f"<think>x<answer>{Q}</answer></think>", {}, False, "out of order"),
    ("text after </answer>", f"<think>x</think><answer>{Q}</answer> hope this helps", {}, False,
     "text after </answer>"),
    ("text before <think>", f"Sure! <think>x</think><answer>{Q}</answer>", {}, False, "text before"),
    ("text between think and answer", f"<think>x</think> so: <answer>{Q}</answer>", {}, False,
     "between"),
    ("invalid JSON", "<think>x</think><answer>{query: vitamin}</answer>", {}, False, "not valid JSON"),
    ("JSON not an object", '<think>x</think><answer>["vitamin"]</answer>', {}, False, "not an object"),
    ("wrong key", '<think>x</think><answer>{"q": "vitamin"}</answer>', {}, False, "no 'query' key"),
    ("non-string query", '<think>x</think><answer>{"query": 42}</answer>', {}, False, "not a string"),
    ("list query", '<think>x</think><answer>{"query": ["a", "b"]}</answer>', {}, False, "not a string"),
    ("empty query", '<think>x</think><answer>{"query": "   "}</answer>', {}, False, "is empty"),
    ("empty answer", "<think>x</think><answer> </answer>", {}, False, "empty answer"),
    ("unicode", '<think>ü</think><answer>{"query": "β-amyloid 阿尔茨海默 \\u00e9"}</answer>', {}, True,
     "β-amyloid 阿尔茨海默 é"),
    ("SQL key", '<think>x</think><answer>{"sql": "SELECT 1"}</answer>', {"key": "sql"}, True, "SELECT 1"),
    ("SQL task given query key", f"<think>x</think><answer>{Q}</answer>", {"key": "sql"}, False,
     "no 'sql' key"),
    ("answer-only valid", f"<answer>{Q}</answer>", {"reasoning": False}, True, "vitamin D AND cancer"),
    ("answer-only with think", f"<think>x</think><answer>{Q}</answer>", {"reasoning": False}, False,
     "not allowed"),
    ("answer-only duplicated", f"<answer>{Q}</answer><answer>{Q}</answer>", {"reasoning": False}, False,
     "2 times"),
    ("query too long", '<think>x</think><answer>{"query": "' + "a" * (MAX_VALUE_CHARS + 1) + '"}</answer>',
     {}, False, "longer than"),
    ("not a string", None, {}, False, "not a string"),
]


@pytest.mark.parametrize("name,text,kwargs,ok,expect", CASES, ids=[c[0] for c in CASES])
def test_strict_parser_table(name, text, kwargs, ok, expect):
    result = parse_answer(text, **kwargs)
    assert result.ok is ok, result
    if ok:
        assert result.value == expect
        assert result.error is None
    else:
        assert result.value is None
        assert expect in result.error


def test_reasoning_is_returned():
    assert parse_answer(f"<think> look for trials </think><answer>{Q}</answer>").reasoning == "look for trials"


def test_100kb_outputs():
    # 100 kB of reasoning with a valid answer is accepted; 100 kB of tag soup is rejected.
    long_ok = "<think>" + "step " * 20_000 + f"</think><answer>{Q}</answer>"
    assert len(long_ok) > 100_000
    assert parse_answer(long_ok).value == "vitamin D AND cancer"
    junk = "<think>" + "x <answer " * 10_000 + "</think>" + "{" * 20_000 + "<answer>" + "[" * 50_000
    assert len(junk) > 100_000
    verdict = parse_answer(junk)
    assert not verdict.ok and "</answer> appears 0 times" in verdict.error
    assert extract_answer_lenient(junk) is not None  # best effort: falls back to the plain text


LENIENT = [
    (f"<think>x</think><answer>{Q}</answer>", "vitamin D AND cancer"),
    (f"Sure, here it is: <answer>{Q}</answer> Good luck!", "vitamin D AND cancer"),
    (f"<answer>{Q}</answer><answer>" + '{"query": "second"}</answer>', "second"),
    ('<answer>{"query": "unclosed"}', "unclosed"),
    ('```json\n{"query": "fenced"}\n```', "fenced"),
    ('The query is {"query": "inline json"} okay', "inline json"),
    ("<answer>plain words query</answer>", "plain words query"),
    ("just a query", "just a query"),
    ("<think>only thinking</think>", None),
    ("", None),
]


@pytest.mark.parametrize("text,expect", LENIENT)
def test_lenient_extractor(text, expect):
    assert extract_answer_lenient(text) == expect


def test_lenient_sql_key():
    assert extract_answer_lenient('<answer>{"sql": "SELECT count(*) FROM singer"}</answer>', "sql") == \
        "SELECT count(*) FROM singer"
