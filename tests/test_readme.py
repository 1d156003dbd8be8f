"""The README's promises: the two commands first, and a config reference that matches the code."""

from __future__ import annotations

import pytest

from fedlora.aggregation import available_aggregators
from fedlora.cli import main
from fedlora.config import describe_defaults
from tests.conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def test_the_first_lines_give_the_run_and_test_commands() -> None:
    head = README.splitlines()[:6]
    assert any(line.startswith("make run") for line in head)
    assert any(line.startswith("make test") for line in head)
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in ci


def test_the_config_reference_is_exactly_the_generated_table(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["config", "--defaults", "--markdown"]) == 0
    table = capsys.readouterr().out
    assert len(table.splitlines()) == 2 + len(list(describe_defaults()))
    section = README.split("\n## Configuration reference\n", 1)[1].split("\n## ", 1)[0]
    # Prose first, then the table and nothing else: no stale rows, no duplicated block.
    assert [line for line in section.splitlines() if line.startswith("|")] == table.splitlines()
    assert section[section.index("| key | default | meaning |") :] == table


def test_every_aggregator_is_documented() -> None:
    for name in available_aggregators():
        assert f"| `{name}` |" in README, name
