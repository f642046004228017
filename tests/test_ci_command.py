"""CI runs what the README says it runs: the README's test command is ``.ci/run``'s command line,
character for character, and it checks the layers, the lint, the types and both test lanes (the fast lane
``-m "not slow"`` first, then ``-m slow``: together they are the whole suite)."""
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ci_command() -> str:
    lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    return next(line for line in lines if line.startswith("pip install"))


def test_the_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("**Tests**", 1)[1]
    block = re.search(r"```bash\n(.*?)\n```", section, re.S)
    assert block is not None, "no ```bash block after **Tests** in the README"
    assert block.group(1) == _ci_command()


def test_ci_checks_layers_types_and_both_lanes():
    steps = [shlex.split(step) for step in _ci_command().split(" && ")]
    assert ["lint-imports"] in steps and ["ruff", "check", "."] in steps and ["mypy"] in steps
    lanes = [s for s in steps if s[:3] == ["python", "-m", "pytest"]]
    assert [s[s.index("-m", 3) + 1] for s in lanes] == ["not slow", "slow"]
