"""The trainer registry and the flags its settings dataclasses generate (``core/flags.py``): one
source of truth for each engine's flag spellings, types and defaults."""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

import pytest

from deepretrieval.cli import build_parser, main
from deepretrieval.core.flags import add_flags, flags_of, values_for
from deepretrieval.train import trainers
from deepretrieval.train.exsearch import ExSearchSettings
from deepretrieval.train.job import TrainJob
from deepretrieval.train.trl_engine import TRLSettings


def test_the_three_engines_are_registered_and_unknown_names_raise():
    assert list(trainers.TRAINERS) == ["trl", "verl", "exsearch"]
    assert trainers.get_trainer("exsearch").settings[0] is ExSearchSettings
    with pytest.raises(KeyError, match="unknown trainer 'ppo'; known: trl, verl, exsearch"):
        trainers.get_trainer("ppo")
    with pytest.raises(ValueError, match="registered already"):
        trainers.register(trainers.TRAINERS["trl"])


def test_unknown_engine_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--engine", "ppo", "--task", "scifact"])
    assert exc.value.code == 2
    assert "invalid choice: 'ppo' (choose from 'trl', 'verl', 'exsearch')" in capsys.readouterr().err


def _train_args(*argv):
    return build_parser().parse_args(["train", "--task", "scifact", *argv])


@pytest.mark.parametrize("name", list(trainers.TRAINERS))
def test_train_flags_default_to_the_settings_dataclasses(name):
    """Parsing ``train`` with no engine flags gives every settings class its own field defaults:
    the dataclasses are the only place a default is written."""
    args = _train_args("--engine", name)
    for cls in trainers.get_trainer(name).settings:
        defaults = {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
                    for f in dataclasses.fields(cls)
                    if (f.default, f.default_factory) != (dataclasses.MISSING,) * 2}
        for key, value in values_for(cls, args).items():
            assert value == defaults[key] or (list(value) == list(defaults[key]) == []), (cls, key)


def test_the_documented_train_defaults():
    """docs/training.md and the README: TRL trains 100 steps and checkpoints every 50 (--resume
    needs them); ExSearch samples at temperature 0.7 (docs/agentic.md, ExSearch)."""
    args = _train_args()
    trl = values_for(TRLSettings, args)
    assert (trl["steps"], trl["save_steps"], trl["learning_rate"]) == (100, 50, 1e-5)
    ex = values_for(ExSearchSettings, _train_args("--engine", "exsearch"))
    assert (ex["temperature"], ex["samples"], ex["max_new_tokens"]) == (0.7, 4, 64)


def test_given_flags_reach_the_settings():
    args = _train_args("--engine", "exsearch", "--lr", "3e-5", "--num-generations", "6",
                       "--turn-tokens", "32", "--no-zero-shot", "--no-resume", "--references",
                       "--evidence-filter", "question", "--max-hops", "2")
    ex = ExSearchSettings(model="m", output_dir="o", **values_for(ExSearchSettings, args))
    assert (ex.learning_rate, ex.samples, ex.max_new_tokens) == (3e-5, 6, 32)
    assert (ex.eval_zero_shot, ex.resume, ex.eval_references, ex.evidence_filter) == \
        (False, False, True, "question")
    assert values_for(trainers.ExSearchRun, args) == {"max_hops": 2, "threads": None}
    job = values_for(TrainJob, _train_args("--index", "a", "--index", "b=/x", "--limit", "3"))
    assert (job["index"], job["limit"], job["task"]) == (["a", "b=/x"], 3, "scifact")
    trl = values_for(TRLSettings, _train_args("--resume", "--report-to", "tensorboard"))
    assert (trl["resume"], trl["report_to"]) == ("last", ["tensorboard"])
    assert values_for(TRLSettings, _train_args("--resume", "ck/checkpoint-4"))["resume"] == \
        "ck/checkpoint-4"


@dataclass
class _A:
    model: str
    steps: int = field(default=10, metadata={"help": "steps"})
    rate: float = field(default=0.5, metadata={"help": "a rate", "flag": "--lr", "aliases": ("--rate",)})
    quiet: bool = field(default=False, metadata={"help": "say less"})
    check: bool = field(default=True, metadata={"help": "skip the check", "flag": "--no-check",
                                                "negate": True})
    tags: list[str] = field(default_factory=list, metadata={"help": "a tag (repeatable)"})
    hidden: int = 3


@dataclass
class _B:
    steps: int = field(default=20, metadata={"help": "steps"})


@dataclass
class _C:
    rate: float = field(default=0.5, metadata={"help": "the same rate", "flag": "--lr",
                                               "aliases": ("--learning-rate",)})


def test_flags_from_a_dataclass():
    p = argparse.ArgumentParser()
    added = add_flags(p, [_A, _C])
    assert list(added) == ["--steps", "--lr", "--quiet", "--no-check", "--tags"]
    assert [f.field for f in flags_of(_A)] == ["steps", "rate", "quiet", "check", "tags"]
    values = values_for(_A, p.parse_args([]))
    assert values == {"steps": 10, "rate": 0.5, "quiet": False, "check": True, "tags": []}
    args = p.parse_args(["--steps", "4", "--rate", "0.1", "--quiet", "--no-check", "--tags", "x",
                         "--tags", "y"])
    assert values_for(_A, args) == {"steps": 4, "rate": 0.1, "quiet": True, "check": False,
                                    "tags": ["x", "y"]}
    assert values_for(_C, p.parse_args(["--learning-rate", "0.2"])) == {"rate": 0.2}  # merged aliases
    text = p.format_help()
    assert "steps (default 10)" in text and "a rate (default 0.5)" in text
    assert "--hidden" not in text and "--model" not in text


def test_a_shared_flag_has_one_default():
    with pytest.raises(ValueError, match="--steps is _A.steps .* and _B.steps .*one flag, one default"):
        add_flags(argparse.ArgumentParser(), [_A, _B])


def test_help_may_not_state_a_default_the_field_owns():
    @dataclass
    class Bad:
        steps: int = field(default=10, metadata={"help": "steps (default 5)"})

    with pytest.raises(ValueError, match="the help states a default"):
        flags_of(Bad)

    @dataclass
    class Unknown:
        steps: int = field(default=10, metadata={"help": "steps", "flags": "--s"})

    with pytest.raises(ValueError, match="unknown flag metadata"):
        flags_of(Unknown)
