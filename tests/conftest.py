"""Shared test settings: hypothesis profiles sized for a 2-core CI machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

REPO_ROOT = Path(__file__).resolve().parents[1]

# Tests never reach a model or dataset hub: everything they load is local or built in the test.
for _offline in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_offline] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
# pytest-xdist runs one worker per core: one torch thread each avoids oversubscription.
torch.set_num_threads(1)

settings.register_profile(
    "default",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", max_examples=400, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


UNGROUPED = pytest.StashKey[bool]()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``--dist loadgroup`` (``make test``), pytest-xdist keeps the tests of one
    ``xdist_group`` on one worker by suffixing their node ids with ``@group``.  Where a pytest
    breaks that (9.2 with pytest-xdist 3.8: pytest-xdist#1386), the Flower tests would silently
    spread over both workers, one waiting minutes on the other's Flower lock: fail them instead."""
    if not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        if item.get_closest_marker("xdist_group") and "@" not in item.nodeid:
            item.stash[UNGROUPED] = True


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.stash.get(UNGROUPED, False):
        pytest.fail(
            "pytest-xdist did not keep this xdist_group test on one worker with this pytest "
            "(pytest-xdist#1386): install the pytest that pyproject.toml pins",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT classifier saved with the real MiniLM tokenizer (no downloads)."""
    from fedlora.model.tiny import save_tiny_bert

    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with a byte-level BPE tokenizer and a chat template (no downloads)."""
    from fedlora.model.tiny import save_tiny_causal_lm

    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real AG News / DBpedia subsets beside the repository (or $FEDLORA_DATA)."""
    candidates = [os.environ.get("FEDLORA_DATA", ""), str(REPO_ROOT.parent / "shared" / "data")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "ag_news").is_dir():
            return Path(candidate)
    pytest.skip("the shared datasets are not available (set FEDLORA_DATA)")
