"""The README's promises: the two commands first, and a config reference that matches the code."""

from __future__ import annotations

from fedlora.aggregation import available_aggregators
from fedlora.config import describe_defaults
from tests.conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def test_the_first_lines_give_the_run_and_test_commands() -> None:
    head = README.splitlines()[:6]
    assert any(line.startswith("make run") for line in head)
    assert any(line.startswith("make test") for line in head)
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in ci


def test_every_config_key_is_documented_with_its_default() -> None:
    for key, default, description in describe_defaults():
        assert f"| `{key}` | `{default}` | {description} |" in README, key


def test_every_aggregator_is_documented() -> None:
    for name in available_aggregators():
        assert f"| `{name}` |" in README, name
