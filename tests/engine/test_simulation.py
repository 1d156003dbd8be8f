"""The in-process runner end to end on a tiny model: files, determinism, resume, every method."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedlora.aggregation import GlobalState, available_aggregators
from fedlora.cli import EXIT_USAGE, main
from fedlora.config import load_config
from fedlora.engine import build_experiment, run_experiment, sample_clients
from fedlora.errors import FedloraError
from fedlora.runs import RunDir, load_checkpoint, read_environment
from tests.engine.helpers import tiny_config

pytestmark = pytest.mark.slow


class KilledRunError(Exception):
    """Raised from the round callback to simulate a killed run."""


def _run(config, *, resume: bool = False, stop_after: int | None = None):  # type: ignore[no-untyped-def]
    run_dir = (
        RunDir(Path(config.run.out_dir))
        if resume
        else RunDir.create(Path(config.run.out_dir), config, overwrite=False)
    )

    def callback(row) -> None:  # type: ignore[no-untyped-def]
        if stop_after is not None and row.round == stop_after:
            raise KilledRunError

    return run_experiment(build_experiment(config), run_dir, resume=resume, on_round=callback)


def _assert_same_state(a: GlobalState, b: GlobalState) -> None:
    """Bit for bit: same seed, same config, same numbers."""
    assert a.round == b.round
    assert a.rank_map() == b.rank_map()
    for name in a.modules:
        assert torch.equal(a.modules[name].A, b.modules[name].A), name
        assert torch.equal(a.modules[name].B, b.modules[name].B), name
    for name in a.dense:
        assert torch.equal(a.dense[name], b.dense[name]), name


def test_run_writes_the_run_directory(tiny_bert_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(tiny_bert_dir, tmp_path / "run")
    result = _run(config)
    run = RunDir(tmp_path / "run")
    assert run.is_finished()
    rows = run.metrics()
    assert [r.round for r in rows] == [0, 1, 2, 3]
    assert rows[0].clients == [] and rows[0].train_loss is None
    for row in rows[1:]:
        assert row.clients == sample_clients(0, row.round, 6, 3)
        assert row.ranks == [[2, 4, 8, 2, 4, 8][c] for c in row.clients]
        assert row.test_accuracy is not None and 0.0 <= row.test_accuracy <= 1.0
        assert row.bytes_up > 0 and row.bytes_down > 0
        assert len(row.extra["client_train_loss"]) == len(row.clients)
        assert row.extra["tiers"] == [f"r{r}" for r in row.ranks]
    csv_lines = (run.path / "metrics.csv").read_text().splitlines()
    assert len(csv_lines) == 5
    for name in ("config.toml", "summary.md", "label_distribution.csv", "label_distribution.png"):
        assert (run.path / name).exists(), name
    assert (run.plots_dir / "metrics.png").stat().st_size > 1000
    checkpoint = load_checkpoint(run.checkpoint_dir)
    _assert_same_state(checkpoint.state, result.state)


def test_traffic_counts_lora_and_dense_apart(tiny_bert_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(tiny_bert_dir, tmp_path / "run", **{"run.rounds": 1})
    result = _run(config)
    experiment = build_experiment(config)
    shapes = experiment.model.module_shapes()
    row = result.metrics[1]
    ranks = {c: [2, 4, 8, 2, 4, 8][c] for c in row.clients}
    lora = {c: r * sum(out + inp for out, inp in shapes.values()) for c, r in ranks.items()}
    head = sum(t.numel() for t in experiment.model.initial_dense().values())
    assert row.lora_params_up == row.lora_params_down == sum(lora.values())
    assert row.dense_params_up == row.dense_params_down == head * len(ranks)
    assert row.merged_params_down == 0
    assert row.bytes_up == row.bytes_down == 4 * (sum(lora.values()) + head * len(ranks))
    for entry in row.extra["traffic"]:
        expected = {"lora_params": lora[entry["client"]], "dense_params": head, "merged_params": 0}
        assert entry["up"] == entry["down"] == {**expected, "bytes": 4 * (sum(expected.values()))}


def test_flora_counts_the_merges_each_client_must_apply(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    # A client receives every merged round it has not applied yet, as stacked factors.
    config = tiny_config(tiny_bert_dir, tmp_path / "run", **{"aggregation.method": "flora"})
    rows = _run(config).metrics
    merged = {m.round: m.num_parameters() for m in RunDir(tmp_path / "run").merged.load(3)}
    assert sorted(merged) == [1, 2, 3]
    last_seen: dict[int, int] = {}
    for row in rows[1:]:
        expected = {}
        for client in row.clients:
            after = last_seen.get(client, 0)
            expected[client] = sum(n for r, n in merged.items() if after < r < row.round)
            last_seen[client] = row.round - 1
        got = {e["client"]: e["down"]["merged_params"] for e in row.extra["traffic"]}
        assert got == expected, f"round {row.round}"
        assert row.merged_params_down == sum(expected.values())
    assert rows[3].merged_params_down > 0


def test_same_seed_same_numbers_other_seed_other_numbers(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    first = _run(tiny_config(tiny_bert_dir, tmp_path / "a", **{"run.rounds": 2}))
    second = _run(tiny_config(tiny_bert_dir, tmp_path / "b", **{"run.rounds": 2}))
    other = _run(tiny_config(tiny_bert_dir, tmp_path / "c", **{"run.rounds": 2, "run.seed": 1}))
    assert [r.test_loss for r in first.metrics] == [r.test_loss for r in second.metrics]
    _assert_same_state(first.state, second.state)
    assert [r.test_loss for r in first.metrics] != [r.test_loss for r in other.metrics]


@pytest.mark.parametrize("method", ["flexlora", "flora"])
def test_resume_ends_with_the_same_numbers(
    tiny_bert_dir: Path, tmp_path: Path, method: str
) -> None:
    overrides = {"aggregation.method": method, "model.lora_dropout": 0.1}
    straight = _run(tiny_config(tiny_bert_dir, tmp_path / "straight", **overrides))
    config = tiny_config(tiny_bert_dir, tmp_path / "killed", **overrides)
    with pytest.raises(KilledRunError):
        _run(config, stop_after=2)
    run = RunDir(tmp_path / "killed")
    assert not run.is_finished()
    assert load_checkpoint(run.checkpoint_dir).state.round == 2
    resumed = _run(config, resume=True)
    assert [r.round for r in resumed.metrics] == [0, 1, 2, 3]
    assert [r.test_loss for r in resumed.metrics] == [r.test_loss for r in straight.metrics]
    assert [r.train_loss for r in resumed.metrics] == [r.train_loss for r in straight.metrics]
    assert [r.bytes_down for r in resumed.metrics] == [r.bytes_down for r in straight.metrics]
    _assert_same_state(resumed.state, straight.state)
    rows = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in rows] == [0, 1, 2, 3]


@pytest.mark.parametrize("method", ["flexlora", "hetlora"])
def test_a_finished_run_continued_to_more_rounds_is_the_longer_run(
    tiny_bert_dir: Path, tmp_path: Path, method: str
) -> None:
    """Two rounds, then continued to four (``fedlora run --resume DIR --rounds 4``): every
    round's numbers and the final state are a four-round run's, bit for bit, and the run's
    environment says when it got longer."""
    overrides = {"aggregation.method": method, "model.lora_dropout": 0.1}
    straight = _run(tiny_config(tiny_bert_dir, tmp_path / "long", **overrides, **{"run.rounds": 4}))
    _run(tiny_config(tiny_bert_dir, tmp_path / "short", **overrides, **{"run.rounds": 2}))
    with pytest.raises(FedloraError, match=r"already finished; add --rounds N to continue it"):
        RunDir.open_for_resume(tmp_path / "short")
    with pytest.raises(FedloraError, match=r"--rounds 2: the run in .* has 2 rounds already"):
        RunDir.open_for_resume(tmp_path / "short", 2)
    assert main(["run", "--resume", str(tmp_path / "short"), "--rounds", "4", "--no-progress"]) == 0
    run = RunDir(tmp_path / "short")
    assert run.is_finished() and load_config(run.config_file).run.rounds == 4
    continued = run.metrics()
    assert [r.round for r in continued] == [0, 1, 2, 3, 4]
    for field in ("test_loss", "train_loss", "test_accuracy", "bytes_up", "clients", "ranks"):
        assert [getattr(r, field) for r in continued] == [
            getattr(r, field) for r in straight.metrics
        ], field
    _assert_same_state(load_checkpoint(run.checkpoint_dir).state, straight.state)
    starts = [(e["start"], e["rounds"]) for e in read_environment(run.path)]
    assert starts == [("new", 2), ("resumed after round 2", 4)]


def test_more_rounds_need_a_run_to_continue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--rounds", "4", "--no-progress"]) == EXIT_USAGE
    assert "--rounds continues an existing run: give it with --resume RUN_DIR" in (
        capsys.readouterr().err
    )
    (tmp_path / "empty").mkdir()
    assert main(["run", "--resume", str(tmp_path / "empty"), "--rounds", "4"]) == EXIT_USAGE
    assert "no config.toml there, so it is not a run directory" in capsys.readouterr().err


@pytest.mark.parametrize("method", sorted(available_aggregators()))
def test_every_aggregator_runs_end_to_end(tiny_bert_dir: Path, tmp_path: Path, method: str) -> None:
    ranks = [4] * 6 if method == "fedit" else [2, 4, 8, 2, 4, 8]
    config = tiny_config(
        tiny_bert_dir,
        tmp_path / method,
        **{"aggregation.method": method, "run.rounds": 2, "ranks.options": {"ranks": ranks}},
    )
    result = _run(config)
    assert [r.round for r in result.metrics] == [0, 1, 2]
    assert all(r.test_loss is not None and r.test_loss == r.test_loss for r in result.metrics)
    assert all(r.extra["dropped"] == [] for r in result.metrics[1:])
    if method == "flora":
        assert result.state.rank_map() == dict.fromkeys(result.state.modules, 0)
    else:
        assert max(result.state.rank_map().values()) >= min(ranks)


def test_resume_before_the_first_checkpoint_starts_over(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    config = tiny_config(tiny_bert_dir, tmp_path / "early", **{"run.checkpoint_every": 3})
    with pytest.raises(KilledRunError):
        _run(config, stop_after=1)
    run = RunDir(tmp_path / "early")
    assert not run.has_checkpoint()
    assert [r.round for r in run.metrics()] == [0, 1]
    resumed = _run(config, resume=True)
    assert [r.round for r in run.metrics()] == [0, 1, 2, 3]
    assert [r.round for r in resumed.metrics] == [0, 1, 2, 3]
