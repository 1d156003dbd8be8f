"""A node's own rows: the same rows the in-process runner trains, tokenised once, cached on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedlora.config import load_config
from fedlora.engine import TrainTask, build_experiment
from fedlora.engine import experiment as experiment_module
from fedlora.engine.node import build_node_trainer, node_source
from fedlora.errors import ConfigError
from fedlora.lora import LoraSettings
from tests.engine.helpers import tiny_causal_config, tiny_config

pytestmark = pytest.mark.slow

LOSS_BASED = {
    "ranks.policy": "loss_based",
    "ranks.options": {"low": 2, "high": 4, "score_rows": 40},
    "data.partition": "dirichlet",
    "data.partition_options": {"alpha": 0.5},
}


def _tokens(rows: Any, indices: np.ndarray) -> list[list[int]]:
    return [rows.input_ids[i, : int(rows.lengths[i])].tolist() for i in indices.tolist()]


@pytest.mark.parametrize("score_on", ["server", "local"])
def test_a_node_holds_exactly_its_clients_rows(
    tiny_bert_dir: Path, tmp_path: Path, score_on: str
) -> None:
    options = {**LOSS_BASED["ranks.options"], "score_on": score_on}  # type: ignore[dict-item]
    config = tiny_config(
        tiny_bert_dir, tmp_path / "run", **{**LOSS_BASED, "ranks.options": options}
    )
    experiment = build_experiment(config)
    for client in (0, 3):
        trainer = build_node_trainer(config, client)
        (train,) = trainer.partitions.values()
        held = trainer.held_out[client]
        assert _tokens(trainer.rows, train) == _tokens(
            experiment.train, experiment.partitions[client]
        )
        expected_held = experiment.held_out.get(client, np.empty(0, dtype=np.int64))
        assert _tokens(trainer.rows, held) == _tokens(experiment.train, expected_held)
        assert len(held) == (len(expected_held) if score_on == "local" else 0)
        assert (
            trainer.rows.labels[train].tolist()
            == experiment.train.labels[experiment.partitions[client]].tolist()
        )


def test_a_causal_node_holds_its_clients_tasks(tiny_llama_dir: Path, tmp_path: Path) -> None:
    config = tiny_causal_config(tiny_llama_dir, tmp_path / "run")
    experiment = build_experiment(config)
    trainer = build_node_trainer(config, 2)
    (train,) = trainer.partitions.values()
    assert _tokens(trainer.rows, train) == _tokens(experiment.train, experiment.partitions[2])


def test_the_cache_serves_a_fresh_process_without_the_dataset(
    tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tiny_config(tiny_bert_dir, tmp_path / "run")
    cache = tmp_path / "cache"
    first = build_node_trainer(config, 1, cache=cache)
    (entry,) = cache.iterdir()

    def no_data(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the dataset was loaded again")

    monkeypatch.setattr(experiment_module, "load_data", no_data)
    second = build_node_trainer(config, 1, cache=cache)
    for name in ("input_ids", "attention_mask", "labels", "lengths"):
        assert torch.equal(getattr(first.rows, name), getattr(second.rows, name)), name
    assert second.rows.num_truncated == first.rows.num_truncated
    # A torn file is dropped and built again from the data.
    entry.write_bytes(entry.read_bytes()[:100])
    monkeypatch.undo()
    third = build_node_trainer(config, 1, cache=cache)
    assert torch.equal(third.rows.input_ids, first.rows.input_ids)
    # Another client, another entry.
    build_node_trainer(config, 2, cache=cache)
    assert len(list(cache.iterdir())) == 2


def test_a_node_trains_on_a_file_of_its_own(tiny_bert_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(tiny_bert_dir, tmp_path / "run")
    names = list(build_experiment(config).group_names)
    own = tmp_path / "mine.csv"
    rows = [f"{names[i % 2]},word{i} text {i}" for i in range(12)]
    own.write_text("label,text\n" + "\n".join(rows) + "\n", encoding="utf-8")
    source = node_source(config, 0, str(own), names)
    assert source.num_train == 12 and source.num_classes == len(names)
    assert source.raw.labels.tolist() == [i % 2 for i in range(12)]  # type: ignore[union-attr]
    trainer = build_node_trainer(config, 0, data_file=str(own), class_names=names)
    state = build_experiment(config).initial_state()
    reply = trainer.train(
        TrainTask(
            client=0, round=1, factors=state.factors_for(2, LoraSettings(16.0)), dense=state.dense
        )
    )
    assert reply.update is not None and reply.update.num_examples == 12
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("label,text\nsports,a text\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"wrong\.csv line 2: label 'sports' is not one of"):
        node_source(config, 0, str(wrong), names)
    with pytest.raises(ConfigError, match="no class names"):
        node_source(config, 0, str(own), None)


def test_a_nodes_own_file_uses_the_runs_label_vocabulary(tmp_path: Path) -> None:
    """Issue 11: a node's file is read with the run's keys and mapped into the run's classes."""
    train = tmp_path / "train.csv"
    train.write_text("".join(f"{1 + i % 4},title {i},body {i}\n" for i in range(40)), "utf-8")
    keys = {
        "data.dataset": str(train),
        "data.has_header": False,
        "data.label_column": 0,
        "data.text_columns": [1, 2],
        "run.num_clients": 4,
    }
    config = load_config(None).replace(keys)
    with pytest.warns(UserWarning, match="counted from 1"):
        server_train, _ = experiment_module.load_data(config)
    names = list(server_train.label_names)
    assert names == ["1", "2", "3", "4"]  # ids 1..4, read as the classes named by them
    own = tmp_path / "mine.csv"
    own.write_text("4,only,the last class\n2,and,the second\n", "utf-8")
    source = node_source(config, 0, str(own), names)
    assert source.raw.labels.tolist() == [3, 1]  # type: ignore[union-attr]
    assert source.raw.texts == ["only the last class", "and the second"]  # type: ignore[union-attr]

    classes = ["World", "Sports", "Business", "Sci/Tech"]
    named = config.replace({"data.classes": classes})
    with pytest.raises(ConfigError, match=r"mine\.csv line 1: label 4 is not one of .* a node"):
        node_source(named, 0, str(own), classes)  # the node cannot know the server's id base
    counted = named.replace({"data.label_format": "from_1"})
    source = node_source(counted, 0, str(own), classes)
    assert source.raw.labels.tolist() == [3, 1]  # type: ignore[union-attr]
    stray = tmp_path / "stray.csv"
    stray.write_text("5,a,b\n", "utf-8")
    with pytest.raises(ConfigError, match=r"stray\.csv line 1: label 5 is not a class id"):
        node_source(counted, 0, str(stray), classes)
