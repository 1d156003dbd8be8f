"""Fixtures of the Flower tests (the harness itself is in ``tests/flower/harness.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.flower.harness import FederationFactory, federations


@pytest.fixture
def flower_federation(tmp_path: Path) -> Iterator[FederationFactory]:
    """``flower_federation(name, tls=False)`` -> a :class:`LocalFederation`, torn down after."""
    yield from federations(tmp_path)
