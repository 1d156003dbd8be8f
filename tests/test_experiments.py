"""Every experiment suite loads, validates, and each of its cells runs one tiny round.

The real runs take hours (``python experiments/run.py``); here every cell's config is resolved and
validated as the suite defines it, then run for one round with a tiny model, a few hundred rows
and one local step, so that a broken suite fails in CI instead of hours into a run.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import importlib.util
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from fnmatch import fnmatch
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from fedlora.config import ExperimentConfig, load_config
from fedlora.engine import build_experiment, run_experiment
from fedlora.errors import ConfigError, FedloraError
from fedlora.lora import LoraFactors
from fedlora.runs import ENVIRONMENT, RoundMetrics, RunDir, read_environment
from fedlora.runs.environment import KERNEL_VARIABLES
from tests.cli.test_macro_f1 import _row
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def _suites_module() -> ModuleType:
    path = REPO_ROOT / "experiments" / "suites.py"
    spec = importlib.util.spec_from_file_location("experiment_suites", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _experiment_module(name: str) -> ModuleType:
    """A script of experiments/ (they import each other as top-level modules)."""
    sys.path.insert(0, str(REPO_ROOT / "experiments"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO_ROOT / "experiments"))


SUITES = _suites_module()
ALL = SUITES.all_suites()


def test_there_are_suites_and_each_names_its_runs() -> None:
    assert {suite.name for suite in ALL} >= {
        "agnews_default",
        "instruct_smollm2",
        "loss_based_scoring",
    }
    for suite in ALL:
        names = [job.name for job in suite.jobs]
        assert len(names) == len(set(names)) == len(suite.cells) * len(suite.seeds)


def _tiny(
    config: ExperimentConfig, out: Path, models: dict[str, Path], data: Path
) -> ExperimentConfig:
    """The run shrunk to seconds: a tiny model, few rows, one round of one step."""
    settings: dict[str, Any] = {
        "run.rounds": 1,
        "run.out_dir": str(out),
        "train.steps": 1,
        "data.max_test_samples": 16,
        "run.num_clients": min(config.run.num_clients, 40),  # a few rows each of the 400 below
        "run.clients_per_round": min(config.run.clients_per_round, 4),
    }
    if config.is_causal_lm:
        settings |= {"model.name": str(models["causal"]), "model.max_length": 64}
        settings |= {"instruct.eval_per_task": 1, "instruct.max_new_tokens": 2}
        settings["data.data_dir"] = str(out / "no-topic-data")
    else:
        settings |= {"model.name": str(models["classifier"]), "data.max_train_samples": 400}
        settings["data.data_dir"] = str(data)
    if config.ranks.policy == "distribution":  # FlexLoRA's tiers do not fit a tiny model
        tiers = [2, 4, {"attention": 4, "mlp": 8}, 8]
        settings["ranks.options"] = {**config.ranks.options, "tiers": tiers}
    if config.ranks.policy == "loss_based":
        settings["ranks.options"] = {**config.ranks.options, "score_rows": 40}
    return config.replace(settings)


def _tiny_run(
    suite: str, cell: str, out: Path, models: dict[str, Path], data: Path
) -> tuple[RunDir, list[Any]]:
    """Seed 0 of a suite's cell, shrunk by :func:`_tiny` and run: its folder and metrics."""
    job = next(j for s in ALL if s.name == suite for j in s.jobs if j.cell == cell and j.seed == 0)
    config = _tiny(job.config(), out, models, data)
    run_dir = RunDir.create(out, config, overwrite=False)
    return run_dir, run_experiment(build_experiment(config), run_dir).metrics


def _tiny_job(
    job: Any, models: dict[str, Path], data: Path, settings: dict[str, Any] | None = None
) -> tuple[Any, RunDir, list[Any]]:
    """The job with :func:`_tiny`'s settings and ``settings`` (its config written beside its run
    directory), run: the job, its run directory and metrics; the job's record answers them."""
    config = _tiny(job.config(), job.out, models, data).replace(settings or {})
    job.out.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(suffix=".toml", dir=job.out.parent)
    os.close(handle)
    path = Path(name)
    path.write_text(config.to_toml(), encoding="utf-8")
    tiny = replace(job, config_path=path, overrides=())
    run_dir = RunDir.create(job.out, config, overwrite=False)
    return tiny, run_dir, run_experiment(build_experiment(config), run_dir).metrics


@pytest.mark.parametrize(
    "job", [s.jobs[i] for s in ALL for i in range(0, len(s.jobs), len(s.seeds))], ids=str
)
def test_every_cell_runs_one_tiny_round(
    job: Any, tmp_path: Path, tiny_bert_dir: Path, tiny_llama_dir: Path, shared_data_dir: Path
) -> None:
    models = {"classifier": tiny_bert_dir, "causal": tiny_llama_dir}
    config = _tiny(job.config(), tmp_path / "run", models, shared_data_dir)
    run_dir = RunDir.create(tmp_path / "run", config, overwrite=False)
    rows = run_experiment(build_experiment(config), run_dir).metrics
    assert [row.round for row in rows] == [0, 1]
    assert run_dir.is_finished()


def test_the_report_writes_flexloras_truncation_energy(
    tmp_path: Path, tiny_bert_dir: Path, tiny_llama_dir: Path, shared_data_dir: Path
) -> None:
    report = _experiment_module("report")
    suite = next(s for s in ALL if s.name == "flexlora_populations_dbpedia")
    job = next(j for j in suite.jobs if j.cell == "flexlora, heavy_tail_light")
    models = {"classifier": tiny_bert_dir, "causal": tiny_llama_dir}
    config = _tiny(job.config(), tmp_path / "run", models, shared_data_dir)
    experiment = build_experiment(config)
    run_dir = RunDir.create(tmp_path / "run", config, overwrite=False)
    rows = run_experiment(experiment, run_dir).metrics
    assert report.write_energy({job.cell: [(0, rows)]}, tmp_path)
    with (tmp_path / "energy.csv").open(encoding="utf-8") as handle:
        lines = list(csv.DictReader(handle))
    assert {line["module"] for line in lines} == set(experiment.module_names)
    assert {int(line["rank"]) for line in lines} >= set(rows[1].ranks)
    assert all(0.0 < float(line["energy_kept"]) <= 1.0 for line in lines)
    assert (tmp_path / "energy.png").stat().st_size > 0
    assert not report.write_energy({"fedit": [(0, rows[:1])]}, tmp_path / "none")


def test_diagnostics_describe_the_runs_final_model(
    tmp_path: Path, tiny_bert_dir: Path, tiny_llama_dir: Path, shared_data_dir: Path
) -> None:
    """Per class: supports add up to the test rows and predicted shares to 1; the re-evaluated
    accuracy is the run's own; only a rank above 5 has high slots to weigh."""
    diagnose = _experiment_module("diagnose")
    models = {"classifier": tiny_bert_dir, "causal": tiny_llama_dir}
    shares, runs = {}, {}
    for cell in ("fedit r5", "fedit r7"):
        run_dir, rows = _tiny_run(
            "byun_lee_fig2_agnews", cell, tmp_path / cell, models, shared_data_dir
        )
        runs[cell] = run_dir
        lines = [
            dict(zip(diagnose.COLUMNS, x, strict=True))
            for x in diagnose.diagnose(run_dir, cell, 0, 5)
        ]
        assert [line["class"] for line in lines] == ["World", "Sports", "Business", "Sci/Tech"]
        assert sum(line["support"] for line in lines) == 16  # data.max_test_samples of _tiny
        assert abs(sum(line["predicted_share"] for line in lines) - 1.0) < 1e-3
        assert {line["accuracy"] for line in lines} == {round(rows[-1].test_accuracy, 4)}
        assert {line["global_rank"] for line in lines} == {int(cell.removeprefix("fedit r"))}
        shares[cell] = lines[0]["high_slot_share"]
    assert shares["fedit r5"] == 0.0
    assert 0.0 < shares["fedit r7"] < 1.0
    # Without --low, the rank every client trains is the smallest any client of the runs trained.
    assert diagnose.smallest_rank("s", [runs["fedit r7"], runs["fedit r5"]]) == 5
    assert diagnose.smallest_rank("s", [runs["fedit r7"]]) == 7
    with pytest.raises(SystemExit, match="s: no finished run to read the smallest rank from"):
        diagnose.smallest_rank("s", [])


def test_a_diagnosed_run_is_read_back_until_its_run_or_low_changes(
    run_script: ModuleType,
    models: dict[str, Path],
    shared_data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    diagnose, records = _experiment_module("diagnose"), _experiment_module("records")
    job = _job(run_script, "byun_lee_fig2_agnews", "fedit r7")
    job, run_dir, _ = _tiny_job(job, models, shared_data_dir)
    record = records.recorded(job)
    first = diagnose.cached_diagnosis(job, record, 5)
    evaluated: list[int] = []
    real: Callable[[RunDir, str, int, int], list[list[object]]] = diagnose.diagnose

    def counting(run: RunDir, cell: str, seed: int, low: int) -> list[list[object]]:
        evaluated.append(low)
        return real(run, cell, seed, low)

    monkeypatch.setattr(diagnose, "diagnose", counting)
    assert diagnose.cached_diagnosis(job, record, 5) == first
    assert evaluated == []
    sixth = diagnose.cached_diagnosis(job, record, 6)
    assert sixth != first
    assert evaluated == [6]
    # Kept with the record: read back with the run directory (and its checkpoints) gone.
    shutil.move(job.out, job.out.with_name("moved"))
    assert diagnose.cached_diagnosis(job, records.recorded(job), 6) == sixth
    assert evaluated == [6]
    with pytest.raises(FedloraError, match=f"{job.name}: its final model must be eval"):
        diagnose.cached_diagnosis(job, record, 4)
    shutil.move(job.out.with_name("moved"), job.out)
    # The run ran again to a different final model: recorded again, evaluated again.
    rows = run_dir.metrics()
    run_dir.rewrite_metrics([*rows[:-1], replace(rows[-1], test_accuracy=0.123)])
    with pytest.raises(SystemExit, match="not the run's final model"):
        diagnose.cached_diagnosis(job, records.recorded(job), 6)
    assert evaluated == [6, 6]


def test_served_models_are_evaluated_per_tier_the_run_could_train(
    tmp_path: Path, tiny_bert_dir: Path, tiny_llama_dir: Path, shared_data_dir: Path
) -> None:
    diagnose = _experiment_module("diagnose")
    models = {"classifier": tiny_bert_dir, "causal": tiny_llama_dir}
    suite = "byun_lee_fig2_agnews"
    for cell, tiers in (("fedit r7", ["r7"]), ("flexlora, random", ["r5", "r20"])):
        run_dir, rows = _tiny_run(suite, cell, tmp_path / cell, models, shared_data_dir)
        lines = [
            dict(zip(diagnose.SERVED_COLUMNS, line, strict=True))
            for line in diagnose.served(run_dir, cell, 0)
        ]
        assert [line["tier"] for line in lines] == tiers
        trained = [tier for row in rows for tier in row.extra.get("tiers", [])]
        assert [line["client_rounds"] for line in lines] == [trained.count(t) for t in tiers]
        assert sum(line["client_rounds"] for line in lines) == len(rows[-1].clients)
        assert {line["global_accuracy"] for line in lines} == {round(rows[-1].test_accuracy, 4)}
        if cell == "fedit r7":  # served at the global rank: the global model itself
            assert lines[0]["served_accuracy"] == lines[0]["global_accuracy"]


def test_the_served_summary_averages_each_cell_and_tier_over_its_seeds() -> None:
    diagnose = _experiment_module("diagnose")
    lines = [
        dict(zip(diagnose.SERVED_COLUMNS, map(str, line), strict=True))
        for line in (
            ["u", 0, "r8", 100, 0.5, 1.5, 0.9],
            ["u", 0, "r200", 300, 0.9, 0.4, 0.9],
            ["u", 1, "r8", 120, 0.7, 1.1, 0.8],
            ["u", 1, "r200", 280, 0.8, 0.6, 0.8],
        )
    ]
    assert diagnose.served_summary(lines).splitlines()[2:] == [
        "| u | r8 | 110 | 0.600 | 0.500, 0.700 | 1.300 | 0.850 |",
        "| u | r200 | 290 | 0.850 | 0.900, 0.800 | 0.500 | 0.850 |",
    ]


def test_the_local_step_probe_trains_the_same_clients_at_every_tier_reproducibly(
    tmp_path: Path, tiny_bert_dir: Path, tiny_llama_dir: Path, shared_data_dir: Path
) -> None:
    local_steps = _experiment_module("local_steps")
    models = {"classifier": tiny_bert_dir, "causal": tiny_llama_dir}
    run_dir, _ = _tiny_run(
        "byun_lee_fig2_agnews", "flexlora, random", tmp_path, models, shared_data_dir
    )
    lines = [dict(zip(local_steps.COLUMNS, x, strict=True)) for x in local_steps.probe(run_dir, 3)]
    assert [line["tier"] for line in lines] == ["r5"] * 3 + ["r20"] * 3
    clients = [line["client"] for line in lines]
    assert clients[:3] == clients[3:] and len(set(clients)) == 3
    assert all(line["move"] > 0 and line["relative_move"] > 0 for line in lines)
    assert local_steps.probe(run_dir, 3) == [list(line.values()) for line in lines]
    # The same clients from the same state at a tenth of the learning rate: every update moves
    # less, and the lines say how they trained.
    lr = f"train.lr={load_config(run_dir.config_file).train.lr / 10}"
    slower = [
        dict(zip(local_steps.COLUMNS, x, strict=True)) for x in local_steps.probe(run_dir, 3, [lr])
    ]
    assert {line["settings"] for line in slower} == {lr}
    assert [line["client"] for line in slower] == clients
    assert all(a["move"] < b["move"] for a, b in zip(slower, lines, strict=True))


def test_a_local_round_is_measured_by_how_far_it_moved_the_effective_update() -> None:
    local_steps = _experiment_module("local_steps")
    generator = torch.Generator().manual_seed(0)
    A, B = torch.randn(4, 6, generator=generator), torch.randn(5, 4, generator=generator)
    served = {"m": LoraFactors(A=A, B=B, alpha=16.0, r=4)}
    doubled = {"m": LoraFactors(A=A, B=2 * B, alpha=16.0, r=4)}
    move, relative = local_steps.moves(served, doubled)
    assert move == pytest.approx(float(torch.linalg.matrix_norm(4.0 * B @ A)), rel=1e-6)
    assert relative == pytest.approx(1.0, rel=1e-6)
    lines = [
        dict(zip(local_steps.COLUMNS, map(str, x), strict=True))
        for x in (
            ["a", "as run", "r8", 1, 10, 0.5, 0.9, 0.7, 0.2, 1.0],
            ["a", "as run", "r8", 2, 12, 0.5, 0.3, 0.4, 0.1, 0.5],
        )
    ]
    assert local_steps.summary(lines).splitlines()[2] == (
        "| a | as run | r8 | 2 | 0.500 | 0.600 | 0.550 | 1 of 2 | 0.1500 | 0.750 |"
    )


def test_rescoring_checks_the_runs_own_model_then_scores_more_unseen_examples(
    run_script: ModuleType, models: dict[str, Path], shared_data_dir: Path
) -> None:
    """At the run's own examples per task the rescored model scores exactly what the run
    reported; at all of them (0) it scores more examples; the contrast is paired by seed."""
    rescore = _experiment_module("rescore")
    (suite,) = run_script.all_suites(["instruct_smollm2_seen"])
    runs = {}
    for cell in ("flexlora", "fedit (all rank 8)"):
        job, run_dir, rows = _tiny_job(_job(run_script, suite.name, cell), models, shared_data_dir)
        runs[cell] = (job, run_dir, rows)
    done = [(job, run_script.recorded(job)) for job, _, _ in runs.values()]
    args = argparse.Namespace(per_task=1, seen=False, name="same", drop_missing=False)
    with (rescore.write_rescored(suite, done, args)).open(encoding="utf-8") as handle:
        same = {line["cell"]: line for line in csv.DictReader(handle)}
    for cell, (_, _, rows) in runs.items():
        assert float(same[cell]["score"]) == pytest.approx(rows[-1].test_score, abs=1e-9)
        assert same[cell]["score"] == same[cell]["run_score"]
        assert same[cell]["examples"] == same[cell]["run_examples"]
        assert same[cell]["seen_examples"] == ""  # the seen tasks left out
        copied = rows[0].extra["baselines"]["copy_input"]["test_score"]
        assert float(same[cell]["copy_score"]) == pytest.approx(copied, abs=1e-9)
    # The untuned model, scored once per seed (by its first cell) and given on every line of
    # the seed, is the run's round 0.
    untuned = runs["flexlora"][2][0].test_score
    assert float(same["flexlora"]["untuned_score"]) == pytest.approx(untuned, abs=1e-9)
    assert same["fedit (all rank 8)"]["untuned_score"] == same["flexlora"]["untuned_score"]
    table = (run_script.RESULTS / suite.name / "same.md").read_text(encoding="utf-8")
    assert f"| untuned model | 0 | {same['flexlora']['examples']} | {untuned:.3f} |" in table
    args.per_task, args.name = 0, "all"
    with (rescore.write_rescored(suite, done, args)).open(encoding="utf-8") as handle:
        every = {line["cell"]: line for line in csv.DictReader(handle)}
    assert {c: int(x["examples"]) > int(x["run_examples"]) for c, x in every.items()} == {
        "flexlora": True,
        "fedit (all rank 8)": True,
    }
    table = (run_script.RESULTS / suite.name / "all.md").read_text(encoding="utf-8")
    difference = float(every["flexlora"]["score"]) - float(every["fedit (all rank 8)"]["score"])
    # One seed: no interval.
    assert f"| flexlora - fedit (all rank 8) | 0 | {difference:+.3f} | — |" in table
    with (run_script.RESULTS / suite.name / "all_contrasts.csv").open(encoding="utf-8") as handle:
        (paired,) = list(csv.DictReader(handle))
    assert (paired["a"], paired["b"], paired["seed"]) == ("flexlora", "fedit (all rank 8)", "0")
    assert float(paired["a_score"]) - float(paired["b_score"]) == pytest.approx(difference)
    # A final state that is not the one the run reported is refused before it is rescored.
    job, run_dir, rows = runs["flexlora"]
    run_dir.rewrite_metrics([*rows[:-1], replace(rows[-1], test_score=0.5)])
    with pytest.raises(SystemExit, match="not the run's final model"):
        rescore.rescore(run_dir, "flexlora", 0, per_task=0, seen=False)


def test_rescoring_is_for_instruction_tuning_runs(
    tmp_path: Path, models: dict[str, Path], shared_data_dir: Path
) -> None:
    rescore = _experiment_module("rescore")
    run_dir, _ = _tiny_run("byun_lee_fig2_agnews", "fedit r5", tmp_path, models, shared_data_dir)
    with pytest.raises(SystemExit, match="scores instruction-tuning runs only"):
        rescore.rescore(run_dir, "fedit r5", 0, per_task=0, seen=False)


def test_rescoring_refuses_a_cell_pattern_that_names_no_cell() -> None:
    """One typo among several patterns would leave its cells unscored, silently."""
    rescore = _experiment_module("rescore")
    (suite,) = rescore.all_suites(["instruct_smollm2_seen"])
    with pytest.raises(
        ConfigError,
        match=r"--cells 'fedit r 8' matches no cell of instruct_smollm2_seen; they are: \[",
    ):
        rescore.finished(suite, ["flexlora*", "fedit r 8"])
    with pytest.raises(SystemExit, match=r"error: --cells 'fedit r 8' matches no cell of "):
        rescore.main(["instruct_smollm2_seen", "--cells", "flexlora*", "fedit r 8"])


def test_the_diagnostics_summary_averages_each_cell_over_its_seeds() -> None:
    """Means per class over seeds, the worst class per seed, and no high-slot weight for a cell
    whose rank has no slots above ``low`` (its 0.0 is not a measurement)."""
    diagnose = _experiment_module("diagnose")

    def run(
        cell: str, seed: int, rank: int, share: float, recalls: list[str]
    ) -> list[dict[str, str]]:
        return [
            {
                "cell": cell,
                "seed": str(seed),
                "global_rank": str(rank),
                "high_slot_share": str(share),
                "class": name,
                "recall": recall,
            }
            for name, recall in zip(("a", "b", "c"), recalls, strict=True)
        ]

    lines = [
        *run("low", 0, 5, 0.0, ["0.9", "0.1", "0.5"]),
        *run("low", 1, 5, 0.0, ["0.7", "0.3", ""]),  # class c absent from seed 1's test rows
        *run("high", 0, 20, 0.2, ["0.6", "0.6", "0.4"]),
        *run("high", 2, 20, 0.4, ["0.8", "0.2", "0.6"]),
    ]
    table = diagnose.summary(lines, low=5).splitlines()
    assert table[0] == (
        "| cell | seeds | weight of slots above 5 | recall a / b / c "
        "| worst class's recall, per seed |"
    )
    assert table[2:] == [
        "| low | 0, 1 | — | 0.80 / 0.20 / 0.50 | 0.10, 0.30 |",
        "| high | 0, 2 | 0.300 | 0.70 / 0.40 / 0.50 | 0.40, 0.20 |",
    ]


def test_every_panel_names_cells_that_exist() -> None:
    by_name = {suite.name: suite for suite in ALL}
    panels = [(s, e) for s in ALL for entries in s.panels.values() for e in entries]
    assert {s.name for s, _ in panels} >= {"byun_lee_fig2_agnews", "byun_lee_fig3_agnews"}
    for suite, entry in panels:
        cells = by_name[entry.suite or suite.name].cells
        assert any(fnmatch(cell, entry.cell) for cell in cells), (suite.name, entry)


def test_every_contrast_names_two_cells_that_exist() -> None:
    by_name = {suite.name: suite for suite in ALL}
    sides = [(s, ref) for s in ALL for pair in s.contrasts.values() for ref in pair]
    assert {s.name for s, _ in sides} >= {"byun_lee_fig2_agnews", "flexlora_populations_dbpedia"}
    for suite, ref in sides:
        assert ref.cell in by_name[ref.suite or suite.name].cells, (suite.name, ref)


@pytest.mark.parametrize("pair", ['["a"]', '["a", "b*"]', '"a"', '["a", 1]'])
def test_a_contrast_must_name_two_cells_exactly(tmp_path: Path, pair: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f'[cells.a]\nset = []\n[contrasts]\n"c" = {pair}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"contrasts\.'c': .* is not two cell names \[A, B\]"):
        SUITES.load_suite(path)


def _curve(accuracies: list[float], rounds: list[int] | None = None) -> list[RoundMetrics]:
    """Round 0 (the untuned model, never part of a curve), then one row per accuracy at
    ``rounds`` (1, 2, ... unless given)."""
    at = rounds or list(range(1, len(accuracies) + 1))
    untuned = replace(_row(1, 0.25, 0.1), round=0)
    return [untuned, *(_row(r, a, 0.1) for r, a in zip(at, accuracies, strict=True))]


def test_a_contrast_pairs_the_seeds_both_cells_finished(tmp_path: Path) -> None:
    """A - B per seed, paired by seed number whatever the order the runs come in: over rounds
    and after the last round (seed 1's A leads over rounds but ends behind), an exact tie said
    as one; seed 2 of A has no B, seed 4 of B no A.  B is a cell of another suite."""
    report = _experiment_module("report")
    contrasts = {
        "a - b": (SUITES.CellRef("a"), SUITES.CellRef("other/b")),
        "a - c": (SUITES.CellRef("a"), SUITES.CellRef("c")),
    }
    suite = SUITES.Suite("s", "", (0, 1, 2, 3), {"a": (), "c": ()}, (), contrasts=contrasts)
    a_runs = [(2, [0.9, 0.9]), (0, [0.6, 0.8]), (3, [0.5, 0.5]), (1, [0.9, 0.5])]
    b_runs = [(1, [0.5, 0.6]), (4, [0.1, 0.1]), (3, [0.5, 0.5]), (0, [0.4, 0.6])]
    finished = report.FinishedRuns(suite, {"a": [(seed, _curve(c)) for seed, c in a_runs]})
    finished.runs["other"] = {"b": [(seed, _curve(c)) for seed, c in b_runs]}
    finished.cells["other"] = ["b"]
    assert report.write_contrasts(finished, tmp_path)
    with (tmp_path / "contrasts.csv").open(encoding="utf-8") as handle:
        lines = list(csv.DictReader(handle))
    assert [(line["seed"], line["b"]) for line in lines] == [
        ("0", "other/b"),
        ("1", "other/b"),
        ("3", "other/b"),
    ]
    assert {line["metric"] for line in lines} == {"test accuracy"}
    assert [float(line["a_mean_over_rounds"]) for line in lines] == pytest.approx([0.7, 0.7, 0.5])
    assert [float(line["b_mean_over_rounds"]) for line in lines] == pytest.approx([0.5, 0.55, 0.5])
    assert [float(line["a_final"]) for line in lines] == pytest.approx([0.8, 0.5, 0.5])
    assert [float(line["b_final"]) for line in lines] == pytest.approx([0.6, 0.6, 0.5])
    table = (tmp_path / "contrasts.md").read_text(encoding="utf-8").splitlines()
    assert table[2] == (
        "| a - b | 0, 1, 3 | 2 | 0.633, 0.517 | +0.117 ± 0.104 | [-0.142, +0.375] "
        "| +0.200, +0.150, 0.000 | 2 of 3, 1 tied | 0.600, 0.567 | +0.033 ± 0.153 "
        "| [-0.346, +0.413] | +0.200, -0.100, 0.000 | 1 of 3, 1 tied |"
    )
    assert table[3].startswith("| a - c | no seed of both finished yet |")
    finished.runs["other"]["b"] = []
    assert not report.write_contrasts(finished, tmp_path / "none")


def test_another_suites_runs_without_a_record_are_read_from_its_committed_rounds(
    run_script: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A contrast and a panel naming another suite's cell whose run directories are gone: the
    seeds no record holds come from that suite's committed rounds.csv, with their trivial
    baselines (a recorded seed from its record), and the report names them; cells the suite no
    longer has are not read."""
    report = _experiment_module("report")
    folder = report.RESULTS / "agnews_default"
    folder.mkdir(parents=True)
    committed = {("flexlora", 0): (0.25, 0.5, 0.7), ("flexlora", 1): (0.25, 0.4, 0.6)}
    committed[("gone", 0)] = (0.25, 0.9, 0.9)
    header = "cell,seed,round,test_loss,test_accuracy,test_macro_f1,test_score,test_rouge_l"
    lines = [
        f"{cell},{seed},{n},1.0,{acc},0.1,{acc},,"
        for (cell, seed), curve in committed.items()
        for n, acc in enumerate(curve)
    ]
    text = "\n".join([f"{header},test_exact_match", *lines]) + "\n"
    (folder / "rounds.csv").write_text(text, encoding="utf-8")
    references = f"reference,seed,{header.split(',', 3)[3]},test_exact_match\n"
    references += "untuned model,0,1.0,0.25,0.1,0.25,,\nmajority_class,0,1.3,0.3,0.05,0.3,,\n"
    (folder / "baselines.csv").write_text(references, encoding="utf-8")
    recorded = {"flexlora": [(1, _curve([0.3, 0.8]))]}  # seed 1 recorded, seed 0 not
    monkeypatch.setattr(report, "finished_runs", lambda suite: dict(recorded))
    contrasts = {"a - b": (SUITES.CellRef("a"), SUITES.CellRef("agnews_default/flexlora"))}
    panels = {"p": (SUITES.CellRef("agnews_default/*", "x"),)}
    suite = SUITES.Suite("s", "", (0, 1), {"a": ()}, (), panels=panels, contrasts=contrasts)
    finished = report.FinishedRuns(suite, {"a": [(0, _curve([0.6, 0.6])), (1, _curve([0.5] * 2))]})
    pairs = report.contrast_lines(finished)["a - b"]
    assert [(x.seed, x.b_mean_over_rounds, x.b_final) for x in pairs] == [
        (0, pytest.approx(0.6), 0.7),
        (1, pytest.approx(0.55), 0.8),
    ]
    assert finished.from_committed == {"agnews_default/flexlora": [0]}
    (shown,) = report.panel_runs(finished)["p"].values()
    assert [[r.test_accuracy for r in rows] for rows in shown] == [
        [0.25, 0.5, 0.7],
        [0.25, 0.3, 0.8],
    ]
    assert "gone" not in finished.runs["agnews_default"]
    majority = shown[0][0].extra["baselines"]["majority_class"]  # seed 0's, dashed in the panel
    assert (majority["test_accuracy"], majority["test_macro_f1"]) == (0.3, 0.05)


@pytest.mark.parametrize(
    "b_rounds",
    [
        [2, 4],  # other rounds
        [1, 3, 4],  # as long as A's, then other rounds
        [2],  # shorter, but not where A begins
    ],
)
def test_a_contrast_of_runs_measured_unalike_is_refused(b_rounds: list[int]) -> None:
    """B evaluated at other rounds than A: their difference would compare unlike curves."""
    report = _experiment_module("report")
    a_rows = _curve([0.5, 0.6, 0.7])
    b_rows = _curve([0.5] * len(b_rounds), rounds=b_rounds)
    contrasts = {"a - b": (SUITES.CellRef("a"), SUITES.CellRef("b"))}
    suite = SUITES.Suite("s", "", (0,), {"a": (), "b": ()}, (), contrasts=contrasts)
    finished = report.FinishedRuns(suite, {"a": [(0, a_rows)], "b": [(0, b_rows)]})
    with pytest.raises(
        ConfigError, match=r"contrast 'a - b', seed 0: 'a' and 'b' are not measured alike"
    ):
        report.contrast_lines(finished)
    unknown = {"a - b": (SUITES.CellRef("a"), SUITES.CellRef("x"))}
    suite = SUITES.Suite("s", "", (0,), {"a": ()}, (), contrasts=unknown)
    with pytest.raises(ConfigError, match=r"contrast 'a - b': no cell 'x'"):
        report.contrast_lines(report.FinishedRuns(suite, {"a": [(0, a_rows)]}))


def test_a_longer_run_is_compared_over_the_shorter_ones_rounds(tmp_path: Path) -> None:
    """A ran 4 rounds, B 2 (a suite run longer against one that was not): both are taken up to
    round 2, the rounds they share, and the table says so; either way round."""
    report = _experiment_module("report")
    contrasts = {
        "a - b": (SUITES.CellRef("a"), SUITES.CellRef("b")),
        "b - a": (SUITES.CellRef("b"), SUITES.CellRef("a")),
    }
    suite = SUITES.Suite("s", "", (0,), {"a": (), "b": ()}, (), contrasts=contrasts)
    runs = {"a": [(0, _curve([0.5, 0.6, 0.9, 0.9]))], "b": [(0, _curve([0.3, 0.4]))]}
    finished = report.FinishedRuns(suite, runs)
    lines = report.contrast_lines(finished)
    (a_b,), (b_a,) = lines["a - b"], lines["b - a"]
    assert (a_b.last_round, a_b.a_mean_over_rounds, a_b.a_final) == (2, pytest.approx(0.55), 0.6)
    assert (a_b.b_mean_over_rounds, a_b.b_final) == (pytest.approx(0.35), 0.4)
    assert (b_a.last_round, b_a.b_final, b_a.a_final) == (2, 0.6, 0.4)
    assert report.write_contrasts(finished, tmp_path)
    table = (tmp_path / "contrasts.md").read_text(encoding="utf-8").splitlines()
    assert table[2].startswith("| a - b | 0 | 2 | 0.550, 0.350 | +0.200 | — | +0.200 | 1 of 1 |")
    # Seed 1 of both cells already continued to 4 rounds: every seed still ends at round 2.
    runs["a"].append((1, _curve([0.4, 0.5, 0.9, 0.9])))
    runs["b"].append((1, _curve([0.2, 0.3, 0.9, 0.9])))
    lines = report.contrast_lines(report.FinishedRuns(suite, runs))
    assert [(x.seed, x.last_round, x.a_final, x.b_final) for x in lines["a - b"]] == [
        (0, 2, 0.6, 0.4),
        (1, 2, 0.5, 0.3),
    ]


def test_a_contrast_is_also_taken_up_to_the_suites_earlier_contrast_rounds(tmp_path: Path) -> None:
    """A run continued from 2 to 4 rounds keeps its round-2 comparison beside the round-4 one:
    here B starts faster (ahead up to round 2 in both seeds) and A ends ahead.  A contrast round
    at or past the last common round adds nothing; one at a round not evaluated is refused."""
    report = _experiment_module("report")
    contrasts = {"a - b": (SUITES.CellRef("a"), SUITES.CellRef("b"))}
    suite = SUITES.Suite(
        "s", "", (0, 1), {"a": (), "b": ()}, (), contrasts=contrasts, contrast_rounds=(2, 4, 9)
    )
    runs = {
        "a": [(0, _curve([0.5, 0.6, 0.9, 0.9])), (1, _curve([0.4, 0.6, 0.8, 0.9]))],
        "b": [(0, _curve([0.7, 0.8, 0.8, 0.8])), (1, _curve([0.6, 0.7, 0.7, 0.7]))],
    }
    finished = report.FinishedRuns(suite, runs)
    lines = report.contrast_lines(finished)["a - b"]
    assert [(x.last_round, x.seed, x.a_final, x.b_final) for x in lines] == [
        (2, 0, 0.6, 0.8),
        (2, 1, 0.6, 0.7),
        (4, 0, 0.9, 0.8),
        (4, 1, 0.9, 0.7),
    ]
    assert [x.a_mean_over_rounds for x in lines[:2]] == [pytest.approx(0.55), pytest.approx(0.5)]
    assert report.write_contrasts(finished, tmp_path)
    table = (tmp_path / "contrasts.md").read_text(encoding="utf-8").splitlines()
    cells = [row.strip("| ").split(" | ") for row in table[2:]]
    assert [row[1:3] + row[9:13] for row in cells] == [
        ["0, 1", "2", "-0.150 ± 0.071", "[-0.785, +0.485]", "-0.200, -0.100", "0 of 2"],
        ["0, 1", "4", "+0.150 ± 0.071", "[-0.485, +0.785]", "+0.100, +0.200", "2 of 2"],
    ]
    every_other = {
        c: [(seed, _curve([0.5, 0.6], rounds=[2, 4])) for seed, _ in runs[c]] for c in runs
    }
    odd = SUITES.Suite(
        "s", "", (0,), {"a": (), "b": ()}, (), contrasts=contrasts, contrast_rounds=(3,)
    )
    with pytest.raises(ConfigError, match=r"'a' and 'b' are not measured alike up to round 3"):
        report.contrast_lines(report.FinishedRuns(odd, every_other))


@pytest.mark.parametrize("rounds", ["[0]", "[20.0]", '["20"]', "20", "[true]"])
def test_contrast_rounds_must_be_rounds_above_zero(tmp_path: Path, rounds: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f"contrast_rounds = {rounds}\n[cells.a]\nset = []\n", encoding="utf-8")
    with pytest.raises(
        ConfigError, match=r"bad\.toml: contrast_rounds: .* is not a list of rounds"
    ):
        SUITES.load_suite(path)


def test_contrast_rounds_come_before_the_last_round_and_before_the_first_table(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bad.toml"
    suite = 'set = ["run.rounds=40"]\ncontrast_rounds = {}\n[cells.a]\nset = []\n'
    path.write_text(suite.format("[20, 10]"), encoding="utf-8")
    assert SUITES.load_suite(path).contrast_rounds == (10, 20)
    path.write_text(suite.format("[20, 40]"), encoding="utf-8")
    with pytest.raises(
        ConfigError, match=r"contrast_rounds: \[40\] not before the last round .*\(40\)"
    ):
        SUITES.load_suite(path)
    # Written after a [table], TOML puts the key in that table: said so, not "not two cells".
    path.write_text("[cells.a]\nset = []\n[contrasts]\ncontrast_rounds = [2]\n", "utf-8")
    with pytest.raises(ConfigError, match=r"\['contrast_rounds'\] under \[contrasts\]: top-level"):
        SUITES.load_suite(path)


def test_runs_are_taken_by_the_first_pattern_they_match_seeds_round_robin() -> None:
    run = _experiment_module("run")
    (suite,) = run.all_suites(["byun_lee_fig2_agnews"])
    patterns = ["*/flexlora, *", "byun_lee_fig2_agnews/f*", "*/flexlora*"]
    order = [(job.cell, job.seed) for job in run.prioritised(list(suite.jobs), patterns)]
    flexlora = ["flexlora, high-quality", "flexlora, random"]
    fedit = ["fedit r5", "fedit r7", "fedit r20", "flexlora r5"]  # suite order, seeds interleaved
    assert order == [(c, seed) for seed in (0, 1, 2) for c in flexlora] + [
        (c, seed) for seed in (0, 1, 2) for c in fedit
    ]  # the last pattern takes no run (the others took them) and is no error
    # A pattern that matches no cell at all (a typo, another suite) would leave its runs out.
    for typo in ("byun_lee_fig2_agnews/fedit r 5", "byun_lee_fig2_dbpedia/*"):
        with pytest.raises(ConfigError, match=rf"--cells '{re.escape(typo)}' matches no suite/cel"):
            run.prioritised(list(suite.jobs), ["*/flexlora, *", typo])
    with pytest.raises(SystemExit, match=r"error: --cells 'nothing/\*' matches no suite/cell; .*"):
        run.main(["byun_lee_fig2_agnews", "--list", "--cells", "*", "nothing/*"])


@pytest.fixture
def run_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """experiments/run.py, its suites' run directories under ``tmp_path / "runs"``, their records
    under ``tmp_path / "records"`` and their results under ``tmp_path / "results"``."""
    run = _experiment_module("run")
    monkeypatch.setattr(sys.modules["suites"], "RUNS", tmp_path / "runs")
    monkeypatch.setattr(sys.modules["suites"], "RECORDS", tmp_path / "records")
    for script in ("report", "diagnose", "rescore", "run"):
        monkeypatch.setattr(_experiment_module(script), "RESULTS", tmp_path / "results")
    return run


@pytest.fixture
def models(tiny_bert_dir: Path, tiny_llama_dir: Path) -> dict[str, Path]:
    """The tiny models :func:`_tiny` gives each kind of task."""
    return {"classifier": tiny_bert_dir, "causal": tiny_llama_dir}


def _job(run: ModuleType, suite: str, cell: str, seed: int = 0) -> Any:
    """A job of the suites ``run`` (the :func:`run_script` fixture) sees, in its directories."""
    (loaded,) = run.all_suites([suite])
    return next(j for j in loaded.jobs if j.cell == cell and j.seed == seed)


def test_a_run_with_a_checkpoint_is_resumed_and_one_without_starts_over(
    run_script: ModuleType, models: dict[str, Path], shared_data_dir: Path
) -> None:
    """run.py never restarts a finished run, continues one with a checkpoint, and starts over
    (``--overwrite``, the suite's settings) one killed before its first checkpoint."""
    run = run_script
    (suite,) = run.all_suites(["agnews_default"])
    job = suite.jobs[0]
    tiny, _, _ = _tiny_job(job, models, shared_data_dir)
    assert run.progress(tiny, run.recorded(tiny)) == "finished"
    assert run.pending(run.find_records([tiny])) == []
    RunDir(job.out).summary_file.unlink()  # killed after round 1's checkpoint: never recorded
    shutil.rmtree(job.record)
    assert run.pending(run.find_records([tiny])) == [tiny]
    resumable = f"resumable after round 1 of {tiny.config().run.rounds}"
    assert run.progress(tiny, None) == resumable
    assert run.command(tiny)[-3:] == ["--resume", str(job.out), "--no-progress"]
    shutil.rmtree(RunDir(job.out).checkpoint_dir)  # killed before its first checkpoint
    assert run.progress(tiny, None) == ""
    restart = run.command(job)
    assert restart[-2:] == ["--overwrite", "--no-progress"]
    assert [x for x in restart if x != "--set"][-2 - len(job.overrides) : -2] == list(job.overrides)


def test_a_suite_given_more_rounds_continues_its_finished_runs(
    run_script: ModuleType, models: dict[str, Path], shared_data_dir: Path
) -> None:
    """A suite asking 2 rounds of a run that finished 1: the job is unfinished again (its record
    answers it no longer) and run.py continues the run directory to 2 rounds; then the record
    is the longer run's, and a suite asking fewer rounds than a run has is refused."""
    from fedlora.cli import main

    run = run_script
    job = _job(run, "agnews_default", "flexlora")
    tiny, _, _ = _tiny_job(job, models, shared_data_dir)
    assert run.progress(tiny, run.recorded(tiny)) == "finished"
    longer = replace(tiny, overrides=("run.rounds=2",))
    assert run.recorded(longer) is None
    assert run.progress(longer, None) == "resumable after round 1 of 2"
    command = run.command(longer)
    assert command[-5:] == ["--resume", str(job.out), "--rounds", "2", "--no-progress"]
    assert main(command[command.index("run") :]) == 0
    record = run.recorded(longer)
    assert record is not None and [r.round for r in record.metrics()] == [0, 1, 2]
    assert run.progress(longer, record) == "finished"
    with pytest.raises(FedloraError, match=r"made with other settings than the suite now gives"):
        run.recorded(tiny)


def _unrun(job: Any, like: Any, settings: dict[str, Any]) -> Any:
    """``job`` with the model and data of the (tiny) job ``like`` and ``settings``, not run."""
    config = job.config().replace({"model.name": like.config().model.name, **settings})
    job.out.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(suffix=".toml", dir=job.out.parent)
    os.close(handle)
    Path(name).write_text(config.to_toml(), encoding="utf-8")
    return replace(job, config_path=Path(name), overrides=())


def test_the_compute_left_is_priced_at_the_finished_runs_of_the_cell(
    run_script: ModuleType, models: dict[str, Path], shared_data_dir: Path
) -> None:
    """Seed 1 of a cell whose seed 0 finished costs all its rounds at seed 0's seconds per
    round, a cell of the same suite with nothing finished the suite's; a suite with no finished
    run cannot be priced and is said apart."""
    run = run_script
    (default,) = run.all_suites(["agnews_default"])
    (other,) = run.all_suites(["loss_based_scoring"])
    done, left, unpriced = default.jobs[0], default.jobs[1], other.jobs[0]
    sibling = default.jobs[len(default.seeds)]
    assert (done.cell, done.seed, left.cell, left.seed) == ("flexlora", 0, "flexlora", 1)
    assert sibling.cell != done.cell
    done, _, rows = _tiny_job(done, models, shared_data_dir)
    per_round = run.seconds_per_round(rows)
    assert per_round == pytest.approx(
        rows[1].seconds_train + rows[1].seconds_aggregate + rows[1].seconds_eval
    )
    seconds, unknown = run.compute_left(run.find_records([done, left, unpriced]))
    assert seconds == pytest.approx(left.config().run.rounds * per_round)
    assert unknown == [unpriced]
    seconds, unknown = run.compute_left(run.find_records([done, sibling]))
    assert (seconds, unknown) == (pytest.approx(sibling.config().run.rounds * per_round), [])
    hours = left.config().run.rounds * per_round / 3600
    assert run.compute_left_line(run.find_records([done, left, unpriced]), 2) == (
        f"about {hours:.1f} h of runs left ({hours / 2:.1f} h 2 at a time), priced at their "
        "cell's or suite's finished runs, else at their committed results' seconds per round, "
        "else at finished runs of their model, data and clients per round; "
        "1 runs with none to price them"
    )
    # Another suite's job with the finished run's model, data and clients per round (a figure
    # run again on other shares) is priced at it; one that trains more clients per round is not.
    sampled = run.workload(done)[2]
    alike, more = (_unrun(unpriced, done, {"run.clients_per_round": n}) for n in (sampled, 8))
    assert run.workload(alike) == run.workload(done) != run.workload(more)
    seconds, unknown = run.compute_left(run.find_records([done, alike, more]))
    assert (seconds, unknown) == (pytest.approx(alike.config().run.rounds * per_round), [more])
    # Listed alone, it is priced at the other suites' finished runs given beside it.
    assert run.compute_left(run.find_records([alike])) == (0.0, [alike])
    seconds, unknown = run.compute_left(run.find_records([alike]), run.find_records([done, more]))
    assert (seconds, unknown) == (pytest.approx(alike.config().run.rounds * per_round), [])
    assert run.compute_left_line(run.find_records([unpriced]), 2) == (
        "1 runs left, none priced: no run of their cells done, nor committed results"
    )
    # A suite run again from nothing is priced at its committed results' seconds per round.
    committed = run.RESULTS / unpriced.suite / "comparison.csv"
    committed.parent.mkdir(parents=True)
    committed.write_text(
        f"method,seconds_per_round\n{unpriced.cell},30.0\nother,90.0\n(untuned model),\n",
        encoding="utf-8",
    )
    seconds, unknown = run.compute_left(run.find_records([unpriced]))
    assert (seconds, unknown) == (unpriced.config().run.rounds * 30.0, [])


def test_a_finished_run_is_recorded_and_read_from_its_record_once_its_directory_is_gone(
    run_script: ModuleType,
    models: dict[str, Path],
    shared_data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The record holds the run's metrics byte for byte (recording again writes the same bytes),
    and with the run directory gone the job is still finished and still reported."""
    run, records, report = run_script, _experiment_module("records"), _experiment_module("report")
    job = _job(run, "agnews_default", "flexlora")
    job, run_dir, _ = _tiny_job(job, models, shared_data_dir)
    assert not job.record.exists()
    record = records.recorded(job)
    assert record.path == job.record
    assert record.metrics_lines() == run_dir.metrics_file.read_bytes()
    rows = run_dir.metrics()
    assert record.metrics() == rows and [row.round for row in rows] == [0, 1]
    ran = (run_dir.path / ENVIRONMENT).read_bytes()
    assert (job.record / ENVIRONMENT).read_bytes() == ran  # where it ran, kept with it
    (entry,) = read_environment(job.record)
    assert entry["start"] == "new"
    assert entry["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    stored = {f.name: f.read_bytes() for f in job.record.iterdir()}
    later = time.time() + 86_400.0  # a day later: the gzip header must not carry the time
    monkeypatch.setattr(time, "time", lambda: later)
    records.archive(job)
    assert {f.name: f.read_bytes() for f in job.record.iterdir()} == stored
    (run_dir.path / ENVIRONMENT).unlink()  # the run again, as older code wrote it
    records.archive(job)
    assert not (job.record / ENVIRONMENT).exists()  # not another run's environment
    shutil.rmtree(job.out)
    found = run.find_records([job])
    assert run.pending(found) == [] and run.progress(job, found[job]) == "finished"
    (suite,) = run.all_suites([job.suite])
    assert report.finished_runs(replace(suite, jobs=(job,))) == {job.cell: [(0, rows)]}


def test_a_record_made_with_other_settings_than_the_suite_gives_is_refused(
    run_script: ModuleType, models: dict[str, Path], shared_data_dir: Path
) -> None:
    run, records = run_script, _experiment_module("records")
    job = _job(run, "agnews_default", "flexlora")
    job, _, _ = _tiny_job(job, models, shared_data_dir)
    records.recorded(job)
    shutil.rmtree(job.out)
    config = load_config(job.record / "config.toml")
    other = config.replace({"train.lr": config.train.lr * 2})
    (job.record / "config.toml").write_text(other.to_toml(), encoding="utf-8")
    with pytest.raises(FedloraError, match=f"{job.record}: made with other settings"):
        run.pending(run.find_records([job]))
    # Where its directory was is not a setting: a record made on another machine answers the job.
    moved = config.replace({"run.out_dir": "/elsewhere/run"})
    (job.record / "config.toml").write_text(moved.to_toml(), encoding="utf-8")
    assert run.pending(run.find_records([job])) == []
    # A finished run directory made with other settings never replaces the job's record.
    kept = {f.name: f.read_bytes() for f in job.record.iterdir()}
    _tiny_job(job, models, shared_data_dir, {"train.lr": config.train.lr * 3})
    with pytest.raises(FedloraError, match=f"{job.out}: made with other settings"):
        run.pending(run.find_records([job]))
    assert {f.name: f.read_bytes() for f in job.record.iterdir()} == kept


def test_results_are_not_rewritten_without_runs_they_report_that_no_record_holds(
    run_script: ModuleType,
    models: dict[str, Path],
    shared_data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A rebuild on a machine without some runs names them, exits non-zero and leaves the
    committed results as they were; ``--out`` writes it elsewhere, ``--drop-missing`` rewrites
    them with the runs held."""
    run, report = run_script, _experiment_module("report")
    job = _job(run, "agnews_default", "flexlora")
    job, _, _ = _tiny_job(job, models, shared_data_dir)
    (suite,) = run.all_suites([job.suite])
    monkeypatch.setattr(report, "all_suites", lambda names: [replace(suite, jobs=(job,))])
    folder = report.RESULTS / job.suite
    folder.mkdir(parents=True)
    committed = "cell,seed,round\nflexlora,0,0\nflexlora,1,0\nfedit r5,2,0\n"
    (folder / "rounds.csv").write_text(committed, encoding="utf-8")
    missing = (
        r"rounds.csv reports 2 runs that have no record here \(fedit r5 seed 2, flexlora seed 1\)"
    )
    assert report.main([job.suite]) == 1
    assert re.search(f"(?m)^error: .*{missing}", capsys.readouterr().err)
    assert (folder / "rounds.csv").read_text(encoding="utf-8") == committed
    # Rebuilding every suite goes on past a refused one, then says which it did not rewrite.
    both = [replace(suite, jobs=(job,)), replace(suite, name="other", jobs=(job,))]
    monkeypatch.setattr(report, "all_suites", lambda names: both)
    assert report.main([]) == 1
    assert f"not rewritten: {job.suite} (see the errors above)" in capsys.readouterr().err
    assert (report.RESULTS / "other" / "rounds.csv").exists()
    assert (folder / "rounds.csv").read_text(encoding="utf-8") == committed
    monkeypatch.setattr(report, "all_suites", lambda names: [both[0]])
    # A partial rebuild goes elsewhere, the committed results untouched, and says which of their
    # runs it found again unchanged (this fake's flexlora seed 0 has other columns: changed).
    capsys.readouterr()
    assert report.main([job.suite, "--out", str(folder / "partial")]) == 0
    assert (folder / "rounds.csv").read_text(encoding="utf-8") == committed
    assert f"{job.suite}, against the committed results: 0 of the 1 runs rounds.csv held " in (
        printed := capsys.readouterr().out
    )
    assert "as before; changed: flexlora seed 0 (last round 0 -> 1)\n" in printed
    with (folder / "partial" / "rounds.csv").open(encoding="utf-8") as handle:
        assert {(r["cell"], r["seed"]) for r in csv.DictReader(handle)} == {("flexlora", "0")}
    assert report.main([job.suite, "--drop-missing"]) == 0
    with (folder / "rounds.csv").open(encoding="utf-8") as handle:
        assert {(r["cell"], r["seed"]) for r in csv.DictReader(handle)} == {("flexlora", "0")}


def test_the_confidence_interval_of_a_contrast_is_students_t_over_the_seeds() -> None:
    """Three seeds: the mean ± t(0.975, 2 df) = 4.3027 (a table's value) times std / sqrt(3),
    so a lead in every seed still holds zero when the seeds spread; one seed has none."""
    report = _experiment_module("report")
    half = 4.302653 * 0.1 / math.sqrt(3)  # differences 0.1, 0.2, 0.3: mean 0.2, std 0.1
    assert report.interval([0.1, 0.2, 0.3]) == f"[{0.2 - half:+.3f}, {0.2 + half:+.3f}]"
    assert report.interval([0.1, 0.2, 0.3]) == "[-0.048, +0.448]"  # ahead in all 3, CI holds 0
    assert report.interval([0.3, 0.31, 0.32]) == "[+0.285, +0.335]"
    assert report.interval([0.1, 0.1, 0.1]) == "[+0.100, +0.100]"
    assert report.interval([0.1]) == "—"


@pytest.mark.parametrize("records", ["none", "ignored"])
def test_a_suite_without_records_rewrites_only_its_curve_tables_from_its_committed_rounds(
    run_script: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    records: str,
) -> None:
    """Its runs lost, a suite keeps every table its runs wrote (rounds.csv, comparison), but its
    figure, contrasts and convergence are made again from its committed curves, with today's
    columns, the seeds paired and ordered as the suite has them.  ``--curves-only`` does the
    same for a suite whose records are there (its runs being continued): never read."""
    report = _experiment_module("report")
    contrasts = {"a - b": (SUITES.CellRef("a"), SUITES.CellRef("b"))}
    suite = SUITES.Suite("lost", "", (0, 1), {"a": (), "b": ()}, (), contrasts=contrasts)
    monkeypatch.setattr(report, "all_suites", lambda names: [suite])

    def finished_runs(suite: Any) -> dict[str, Any]:
        assert records == "none", "--curves-only read the records"
        return {}

    monkeypatch.setattr(report, "finished_runs", finished_runs)
    folder = report.RESULTS / "lost"
    folder.mkdir(parents=True)
    curves = {("b", 1): (0.2, 0.3, 0.5), ("a", 1): (0.2, 0.6, 0.4), ("a", 0): (0.2, 0.5, 0.9)}
    curves[("b", 0)] = (0.2, 0.4, 0.6)
    curves[("gone", 0)] = (0.2, 0.9, 0.9)  # a cell the suite no longer has
    lines = [
        f"{cell},{seed},{n * 2},1.0,{acc},0.1,{acc},,"
        for (cell, seed), curve in curves.items()
        for n, acc in enumerate(curve)
    ]
    header = "cell,seed,round,test_loss,test_accuracy,test_macro_f1,test_score,test_rouge_l,"
    rounds = "\n".join([f"{header}test_exact_match", *lines]) + "\n"
    (folder / "rounds.csv").write_text(rounds, encoding="utf-8")
    (folder / "comparison.md").write_text("as the runs wrote it\n", encoding="utf-8")
    assert report.main(["lost"] + (["--curves-only"] if records == "ignored" else [])) == 0
    assert "lost: its figures, contrasts and convergence rewritten from the 4 runs of its " in (
        capsys.readouterr().out
    )
    assert (folder / "rounds.csv").read_text(encoding="utf-8") == rounds
    assert (folder / "comparison.md").read_text(encoding="utf-8") == "as the runs wrote it\n"
    assert (folder / "comparison.png").stat().st_size > 0  # redrawn from the curves
    with (folder / "convergence.csv").open(encoding="utf-8") as handle:
        convergence = list(csv.DictReader(handle))
    assert [(x["cell"], x["seed"]) for x in convergence] == [
        ("a", "0"),
        ("a", "1"),
        ("b", "0"),
        ("b", "1"),
    ]
    assert [float(x["mean_over_rounds"]) for x in convergence] == pytest.approx(
        [0.7, 0.5, 0.5, 0.4]
    )
    assert [float(x["late_gain"]) for x in convergence] == pytest.approx([0.4, -0.2, 0.2, 0.2])
    with (folder / "contrasts.csv").open(encoding="utf-8") as handle:
        paired = list(csv.DictReader(handle))
    assert [
        (x["seed"], x["last_round"], float(x["a_final"]), float(x["b_final"])) for x in paired
    ] == [
        ("0", "4", 0.9, 0.6),
        ("1", "4", 0.4, 0.5),
    ]
    if records == "ignored":  # nothing committed to rewrite from: said so, not "no run"
        (folder / "rounds.csv").unlink()
        assert report.main(["lost", "--curves-only"]) == 0
        assert capsys.readouterr().out == "lost: no committed rounds.csv\n"


def test_a_rebuild_says_which_runs_it_found_as_committed_and_which_changed() -> None:
    report = _experiment_module("report")
    before = "cell,seed,round,test_score\na,0,0,0.1\na,0,2,0.5\na,1,2,0.6\nb,0,2,0.7\n"
    after = "cell,seed,round,test_score\na,0,0,0.1\na,0,2,0.5\na,1,2,0.61\nc,0,2,0.9\n"
    assert report.reproduction(before, after) == (
        "1 of the 2 runs rounds.csv held before have every round as before; "
        "changed: a seed 1 (round 2: 0.6000 -> 0.6100)"
    )
    assert report.reproduction("", after) == (
        "0 of the 0 runs rounds.csv held before have every round as before"
    )
    shorter = "cell,seed,round,test_score\na,0,0,0.1\n"  # a round fewer: not the same run
    assert report.reproduction(before, shorter).endswith("changed: a seed 0 (last round 2 -> 0)")


def test_a_panel_entry_must_be_a_pattern_or_a_label_and_cell(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[cells.a]\nset = []\n[panels]\n"p" = [{name = "x"}]\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"panels\.'p': \{'name': 'x'\} is neither"):
        SUITES.load_suite(path)


def test_the_report_writes_seen_and_unseen_task_scores(
    tmp_path: Path, tiny_bert_dir: Path, tiny_llama_dir: Path, shared_data_dir: Path
) -> None:
    report = _experiment_module("report")
    models = {"classifier": tiny_bert_dir, "causal": tiny_llama_dir}
    runs = {}
    for cell in ("flexlora", "hetlora"):
        _, rows = _tiny_run("instruct_smollm2_seen", cell, tmp_path / cell, models, shared_data_dir)
        runs[cell] = [(0, rows)]
    assert report.write_seen_tasks(runs, tmp_path)
    with (tmp_path / "seen_tasks.csv").open(encoding="utf-8") as handle:
        lines = list(csv.DictReader(handle))
    methods = ["flexlora", "hetlora", "(untuned model)", "(baseline: copy_input)"]
    assert [line["method"] for line in lines] == methods
    final = runs["flexlora"][0][1][-1]
    assert float(lines[0]["seen_score"]) == final.extra["seen_tasks"]["score"]
    assert float(lines[0]["unseen_score"]) == final.test_score
    assert lines[3]["seen_loss"] == "" and lines[3]["seen_rouge_l"] != ""
    table = (tmp_path / "seen_tasks.md").read_text(encoding="utf-8").splitlines()
    assert [row.split(" | ")[0] for row in table[2:]] == [f"| {m}" for m in methods]
    assert not report.write_seen_tasks({"x": [(0, runs["flexlora"][0][1][:0])]}, tmp_path / "n")


def test_holders_say_who_trained_the_highest_rank_round_by_round(tmp_path: Path) -> None:
    """Round 1: one client at rank 20 (high-quality client 2); round 2: two (neither
    high-quality); round 3: none.  A run at one rank has no holders line."""
    report = _experiment_module("report")
    start = replace(_row(1, 0.25, 0.1), round=0, extra={"high_quality_clients": [2, 9]})
    trained = [([1, 2, 3], [5, 20, 5]), ([4, 5, 6], [20, 20, 5]), ([7, 8, 9], [5, 5, 5])]
    rows = [start] + [
        replace(_row(i + 1, 0.5, 0.1), clients=clients, ranks=ranks)
        for i, (clients, ranks) in enumerate(trained)
    ]
    assert report.holder_line(rows) == [20, 3, 1.0, 1, 1, 3, 1]
    no_split = [replace(start, extra={}), *rows[1:]]
    assert report.holder_line(no_split) == [20, 3, 1.0, 1, 1, 3, ""]
    one_rank = [start, *(replace(r, ranks=[5, 5, 5]) for r in rows[1:])]
    assert report.holder_line(one_rank) is None
    runs = {"mixed": [(1, no_split), (0, rows)], "homogeneous": [(0, one_rank)]}
    assert report.write_holders(runs, tmp_path)
    table = (tmp_path / "holders.md").read_text(encoding="utf-8").splitlines()
    assert table[2:] == [
        "| mixed | 0, 1 | 20 | 1.000 ± 0.000 | 1 of 3, 1 of 3 | 1, 1 | 1 of 3, — |"
    ]
    assert not report.write_holders({"homogeneous": [(0, one_rank)]}, tmp_path / "none")


def test_the_energy_table_gives_each_rank_its_mean_seeds_worst_and_first_and_last_rounds() -> None:
    report = _experiment_module("report")
    kept = {  # (seed, round, module) -> energy rank 8 keeps
        (0, 1, "m1"): 0.90,
        (0, 1, "m2"): 0.80,
        (0, 2, "m1"): 0.99,
        (0, 2, "m2"): 0.99,
        (1, 1, "m1"): 0.70,
        (1, 1, "m2"): 0.90,
        (1, 2, "m1"): 0.98,
        (1, 2, "m2"): 1.00,
    }
    lines = [["c", seed, r, module, 8, share] for (seed, r, module), share in kept.items()]
    lines.append(["c", 0, 1, "m1", 30, 1.0])
    table = report.energy_table(lines).splitlines()
    assert table[2:] == [
        "| c | 8 | 9.25 | 8, 10.5 | 30, round 1, m1 | 17.5 (round 1) | 1 (round 2) |",
        "| c | 30 | 0 | 0 | 0, round 1, m1 | 0 (round 1) | 0 (round 1) |",
    ]


def test_tiers_give_each_tiers_clients_their_mean_training_loss_by_third_of_the_rounds(
    tmp_path: Path,
) -> None:
    """Three rounds, one per third: each client's loss goes to its own tier; a client without a
    loss (dropped) is left out; a run that recorded no tiers gives no table."""
    report = _experiment_module("report")
    start = replace(_row(1, 0.25, 0.1), round=0)

    def trained(round_index: int, losses: list[float | None]) -> RoundMetrics:
        extra = {"tiers": ["r8", "r200", "r8"], "client_train_loss": losses}
        return replace(_row(round_index, 0.5, 0.1), ranks=[8, 200, 8], extra=extra)

    rows = [
        start,
        trained(1, [2.0, 1.0, 3.0]),
        trained(2, [1.5, None, 1.5]),
        trained(3, [1.0, 0.5, 0.8]),
    ]
    assert report.tier_lines(rows)[:3] == [("r8", 0, 2.0), ("r200", 0, 1.0), ("r8", 0, 3.0)]
    assert ("r200", 1, None) not in report.tier_lines(rows)
    plain = [start, *(replace(r, extra={"client_train_loss": [1.0, 1.0, 1.0]}) for r in rows[1:])]
    assert report.tier_lines(plain) == []
    runs = {"mixed": [(0, rows)], "homogeneous": [(0, plain)]}
    assert report.write_tiers(runs, tmp_path)
    table = (tmp_path / "tiers.md").read_text(encoding="utf-8").splitlines()
    assert table[2:4] == [
        "| mixed | r8 | 6 | 2.500 / 1.500 / 0.900 | 0.900 |",
        "| mixed | r200 | 2 | 1.000 / — / 0.500 | 0.500 |",
    ]
    assert not report.write_tiers({"homogeneous": [(0, plain)]}, tmp_path / "none")


def test_convergence_is_the_curves_mean_and_the_first_round_past_each_threshold(
    tmp_path: Path,
) -> None:
    report = _experiment_module("report")
    curves = {0: [0.5, 0.65, 0.72, 0.7], 1: [0.3, 0.4, 0.5, 0.61]}
    runs = {"m": [(seed, _curve(curve)) for seed, curve in curves.items()]}
    report.write_convergence(runs, tmp_path)
    with (tmp_path / "convergence.csv").open(encoding="utf-8") as handle:
        lines = list(csv.DictReader(handle))
    assert [float(line["mean_over_rounds"]) for line in lines] == pytest.approx([0.6425, 0.4525])
    assert [line["first_round_at_0.6"] for line in lines] == ["2", "4"]
    assert [line["first_round_at_0.7"] for line in lines] == ["3", ""]
    assert [(line["late_gain_from_round"], line["late_gain_to_round"]) for line in lines] == [
        ("3", "4"),
        ("3", "4"),
    ]
    assert [float(line["late_gain"]) for line in lines] == pytest.approx([-0.02, 0.11])
    table = (tmp_path / "convergence.md").read_text(encoding="utf-8")
    assert (
        "| m | 2 | 0.547 ± 0.134 | 0.642, 0.453 | 2, 4 | 3, — "
        "| +0.045 ± 0.092 (rounds 3–4) | -0.020, +0.110 |"
    ) in table


def test_a_suite_names_its_own_convergence_thresholds(tmp_path: Path) -> None:
    """A dataset learnt past 0.8 (DBpedia-14 at 40 rounds) is told apart by a higher threshold."""
    report = _experiment_module("report")
    runs = {"m": [(0, _curve([0.5, 0.65, 0.85])), (1, _curve([0.62, 0.81, 0.83]))]}
    report.write_convergence(runs, tmp_path, thresholds=(0.6, 0.8))
    with (tmp_path / "convergence.csv").open(encoding="utf-8") as handle:
        lines = list(csv.DictReader(handle))
    assert [(line["first_round_at_0.6"], line["first_round_at_0.8"]) for line in lines] == [
        ("2", "3"),
        ("1", "2"),
    ]
    assert "first_round_at_0.7" not in lines[0]
    header = (tmp_path / "convergence.md").read_text(encoding="utf-8").splitlines()[0]
    assert "| first round at 0.6, per seed | first round at 0.8, per seed |" in header
    path = tmp_path / "suite.toml"
    path.write_text("convergence_thresholds = [0.8, 0.6, 1]\n[cells.a]\nset = []\n", "utf-8")
    assert SUITES.load_suite(path).convergence_thresholds == (0.6, 0.8, 1.0)
    path.write_text("[cells.a]\nset = []\n", encoding="utf-8")
    assert SUITES.load_suite(path).convergence_thresholds == (0.6, 0.7)
    for bad in ("[]", "[0.0]", '["0.8"]', "[true]", "0.8", "[inf]"):
        path.write_text(f"convergence_thresholds = {bad}\n[cells.a]\nset = []\n", "utf-8")
        with pytest.raises(
            ConfigError, match=r"suite\.toml: convergence_thresholds: .* not a list"
        ):
            SUITES.load_suite(path)


def test_the_late_gain_says_whether_a_curve_has_flattened() -> None:
    """The rise late in the run: from the first evaluation at or past 3/4 of the last round (16
    of 20 when every second round is evaluated) to the end; from the evaluation before the last
    when none is that late; none from a single evaluation, never a false 0."""
    report = _experiment_module("report")
    rounds = list(range(2, 21, 2))
    rising = _curve([0.1 * n / 2 for n in rounds], rounds=rounds)
    assert report.late_gain(rising) == (16, 20, pytest.approx(0.2))
    flat = _curve([0.5] * 7 + [0.8, 0.8, 0.8], rounds=rounds)
    assert report.late_gain(flat) == (16, 20, 0.0)
    assert report.late_gain(_curve([0.5, 0.7], rounds=[10, 20])) == (10, 20, pytest.approx(0.2))
    assert report.late_gain(_curve([0.5, 0.6])) == (1, 2, pytest.approx(0.1))
    assert report.late_gain(_curve([0.5])) is None


def test_a_recheck_reruns_a_finished_run_and_finds_every_number_again(
    run_script: ModuleType, models: dict[str, Path], shared_data_dir: Path, tmp_path: Path
) -> None:
    """Two rounds run, the first re-run from the run's record (its directory gone): round 0's
    evaluation and round 1's training loss are compared (round 1 was not evaluated by the longer
    run) and equal bit for bit."""
    recheck = _experiment_module("recheck")
    job = _job(run_script, "agnews_default", "flexlora")
    settings = {"run.rounds": 2, "run.eval_every": 2, "train.steps": 2}
    job, _, _ = _tiny_job(job, models, shared_data_dir, settings)
    with pytest.raises(FedloraError, match="made with other settings"):
        recheck.finished(f"{job.suite}/{job.name}")  # the suite's own job is not this tiny run
    record = _experiment_module("records").recorded(job)
    shutil.rmtree(job.out)
    lines = recheck.recheck(record, 1, tmp_path / "scratch")
    compared = {(line[0], line[1]) for line in lines}
    assert (0, "test_accuracy") in compared and (1, "train_loss") in compared
    assert (1, "test_accuracy") not in compared
    assert all(line[4] for line in lines), [line for line in lines if not line[4]]
    assert recheck.finished(f"{job.suite}/no-such-run") is None


def test_a_recheck_is_named_by_its_commit_overrides_and_cpu_kernels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recheck = _experiment_module("recheck")
    for name in KERNEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    cpu = f"cpu={torch.backends.cpu.get_cpu_capability()}"
    by = recheck.rerun_by(["train.lr=0.1"]).split(" ")
    assert by[1:] == ["train.lr=0.1", cpu, "MKL_CBWR=COMPATIBLE", "OMP_NUM_THREADS=1"]
    assert by[0] == recheck.commit()
