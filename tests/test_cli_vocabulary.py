"""The flag vocabulary, over every command's parser (built from ``deepretrieval.cli``): one
hyphenated spelling per concept in ``--help``, every flag in the table of docs/cli.md, old spellings
hidden but still parsed, and help texts whose stated defaults are the parser's."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from deepretrieval.cli import build_parser, main
from deepretrieval.cli.vocabulary import BY_FLAG, BY_OLD, VOCABULARY, options, parsers, render_markdown

FLAG = re.compile(r"^--[a-z0-9]+(-[a-z0-9]+)*$")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def parser():
    return build_parser()


def _commands(parser):
    return [(" ".join(path) or "deepretrieval", p) for path, p in parsers(parser)]


def test_every_shown_flag_is_hyphenated_and_in_the_vocabulary(parser):
    problems = []
    for name, p in _commands(parser):
        for action in options(p):
            shown, *hidden = action.option_strings
            if not FLAG.match(shown):
                problems.append(f"{name}: {shown} is not --lower-case-hyphenated")
            if shown in BY_OLD:
                problems.append(f"{name}: {shown} is an old spelling of {BY_OLD[shown].flag}")
            elif shown not in BY_FLAG:
                problems.append(f"{name}: {shown} is not in the vocabulary (cli/vocabulary.py)")
            for alias in hidden:  # an alias is a registered old spelling of the same concept
                if alias not in BY_FLAG.get(shown, VOCABULARY[0]).old:
                    problems.append(f"{name}: {alias} (alias of {shown}) is not one of its old "
                                    f"spellings in the vocabulary")
    assert not problems, "\n".join(problems)


def test_one_spelling_per_concept_in_help(parser):
    """--help lists each option by one spelling; no old spelling appears anywhere in it."""
    problems = []
    for name, p in _commands(parser):
        text = p.format_help()
        for action in options(p):
            for alias in action.option_strings[1:]:
                if re.search(rf"(?<![\w-]){re.escape(alias)}(?![\w-])", text):
                    problems.append(f"{name}: --help shows {alias}")
        shown = [a.option_strings[0] for a in options(p)]
        concepts = [BY_FLAG[f].concept for f in shown if f in BY_FLAG]
        if len(concepts) != len(set(concepts)):
            problems.append(f"{name}: a concept shown twice: {sorted(shown)}")
    assert not problems, "\n".join(problems)


def test_the_vocabulary_has_no_stale_or_ambiguous_entries(parser):
    used = {a.option_strings[0] for _, p in _commands(parser) for a in options(p)}
    assert sorted(set(BY_FLAG) - used) == [], "vocabulary entries no command has"
    assert len(BY_FLAG) == len(VOCABULARY), "a flag listed twice"
    assert not set(BY_OLD) & set(BY_FLAG), "a spelling both current and old"
    assert len(BY_OLD) == sum(len(c.old) for c in VOCABULARY), "an old spelling of two concepts"


DEFAULT = re.compile(r"\bdefault:?\s+([-\w.+/]+)")


def _number(text: str) -> float | None:
    try:
        return float(text.rstrip("."))
    except ValueError:
        return None


def _contradicts(stated: str, action: argparse.Action) -> bool:
    """A stated default that is a number, or one of the option's choices, must be its default
    (prose such as "default: the rows'" is not checked)."""
    value = action.default
    if isinstance(value, bool) or value is None:
        return False
    if _number(stated) is not None and isinstance(value, (int, float)):
        return _number(stated) != float(value)
    if _number(stated) is not None:
        return True  # a number stated for a non-numeric default
    if action.choices and stated.rstrip(".") in map(str, action.choices):
        return stated.rstrip(".") != str(value)
    return False


def test_help_defaults_are_the_parsers_defaults(parser):
    """Where an option has a default and its help states one, they agree (a default computed at
    run time — the parser's default is None — is the command's to state)."""
    problems = []
    for name, p in _commands(parser):
        for action in options(p):
            value = action.default
            if value is None or value is argparse.SUPPRESS or not action.help \
                    or action.help is argparse.SUPPRESS:
                continue
            for stated in DEFAULT.findall(action.help):
                if _contradicts(stated, action):
                    problems.append(f"{name} {action.option_strings[0]}: help says default "
                                    f"{stated!r}, the parser's is {value!r}")
    assert not problems, "\n".join(problems)


def test_docs_cli_md_is_the_vocabulary(parser):
    assert (ROOT / "docs" / "cli.md").read_text() == render_markdown(parser), \
        "regenerate: python -c 'import deepretrieval.cli as c; c.vocabulary.write_docs(c.build_parser())'"


# old spellings still parse, to the same values as the current ones
SAME_PARSE = [
    (["search", "--index", "scifact", "-k", "3", "q"], ["search", "--index", "scifact", "--top-k", "3", "q"]),
    (["eval", "--model", "m", "--no-reasoning", "--n", "2", "--base-url", "http://h/v1"],
     ["eval", "--model", "m", "--no-reason", "--num-generations", "2", "--api-url", "http://h/v1"]),
    (["prepare", "beir", "--corpus", "c", "--queries", "q", "--qrels", "r", "--name", "x",
      "--no_reason", "--test_fraction", "0.3", "--split_by", "f", "--index_dir", "d"],
     ["prepare", "beir", "--corpus", "c", "--queries", "q", "--qrels", "r", "--name", "x",
      "--no-reason", "--test-fraction", "0.3", "--split-by", "f", "--index-dir", "d"]),
    (["prepare", "qa", "--set", "nq", "--index", "i", "--topk", "5", "--max_turns", "2", "--repo_id", "r"],
     ["prepare", "qa", "--set", "nq", "--index", "i", "--top-k", "5", "--max-turns", "2", "--repo-id", "r"]),
    (["download", "--output_dir", "o", "--list_only", "--no_progress", "--repo_id", "r"],
     ["download", "--out", "o", "--list-only", "--no-progress", "--repo-id", "r"]),
    (["convert", "--in", "a.parquet", "--out", "b", "--keep_data_source"],
     ["convert", "--input", "a.parquet", "--out", "b", "--keep-data-source"]),
    (["index-dense", "--corpus", "c", "--name", "n", "--precision", "bfloat16"],
     ["index-dense", "--corpus", "c", "--name", "n", "--dtype", "bfloat16"]),
    (["train", "--engine", "exsearch", "--task", "t", "--samples", "3", "--gen-batch-size", "8"],
     ["train", "--engine", "exsearch", "--task", "t", "--num-generations", "3", "--batch-size", "8"]),
    (["quickstart", "--eval-batch-size", "4"], ["quickstart", "--batch-size", "4"]),
    (["-v", "tasks"], ["--verbose", "tasks"]),
]


@pytest.mark.parametrize("old,new", SAME_PARSE, ids=[" ".join(o[:2]) for o, _ in SAME_PARSE])
def test_old_spellings_parse_like_the_new_ones(parser, old, new):
    assert vars(parser.parse_args(old)) == vars(parser.parse_args(new))


def test_old_spellings_run_end_to_end(capsys, tmp_path):
    """A sample of old spellings through main(): the same output as the current spellings."""
    def run(argv):
        assert main(argv) == 0
        return capsys.readouterr().out

    assert run(["search", "--index", "scifact", "-k", "2", "--json", "aspirin heart"]) == \
        run(["search", "--index", "scifact", "--top-k", "2", "--json", "aspirin heart"])
    old = run(["train", "--engine", "exsearch", "--task", "agent_closedworld", "--no-service",
               "--dry-run", "--out", str(tmp_path / "x"), "--samples", "3", "--gen-batch-size", "8"])
    new = run(["train", "--engine", "exsearch", "--task", "agent_closedworld", "--no-service",
               "--dry-run", "--out", str(tmp_path / "x"), "--num-generations", "3",
               "--batch-size", "8"])
    assert old == new and "  samples = 3\n" in new and "  gen_batch_size = 8\n" in new


def test_the_default_check_catches_a_contradiction():
    p = argparse.ArgumentParser()
    wrong = p.add_argument("--steps", type=int, default=100, help="GRPO steps (default 50)")
    right = p.add_argument("--engine", choices=("trl", "verl"), default="trl", help="(default trl)")
    prose = p.add_argument("--top-k", type=int, help="passages per search (default: the rows')")
    assert [_contradicts(s, wrong) for s in DEFAULT.findall(wrong.help)] == [True]
    assert [_contradicts(s, right) for s in DEFAULT.findall(right.help)] == [False]
    assert [_contradicts(s, prose) for s in DEFAULT.findall(prose.help)] == [False]
