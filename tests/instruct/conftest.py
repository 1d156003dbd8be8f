"""Instruction tests never see ``$FEDLORA_DATA`` unless they pass a data directory explicitly."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDLORA_DATA", raising=False)
