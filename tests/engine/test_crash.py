"""A crash never costs a run: killed anywhere, resumed, the run ends bit for bit as if never
killed; a damaged checkpoint is never used (the previous one is, or the resume stops with one
line).

The kill tests run ``fedlora run`` in a subprocess that SIGKILLs itself at a named point
(:mod:`fedlora.runs.faults`): between the file operations of a checkpoint, of a merged round,
and inside training, aggregation, evaluation and recording.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fedlora.aggregation import available_aggregators
from fedlora.cli import main
from fedlora.config import load_config
from fedlora.errors import FedloraError
from fedlora.runs import RunDir, load_checkpoint, read_environment, read_metrics
from fedlora.runs.checkpoint import config_digest
from tests.engine.helpers import write_tiny_config

pytestmark = pytest.mark.slow

POINTS = [
    "round:train:2",
    "round:aggregate:2",
    "round:evaluate:3",
    "round:record:2",
    "checkpoint:write:2",
    "checkpoint:fsync:2",
    "checkpoint:rename:2",
    "checkpoint:fsync-dir:2",
    "checkpoint:prune:3",
]
OTHERS = {  # one point each, a different one per method
    "flexlora": "round:evaluate:3",
    "fedit": "checkpoint:rename:2",
    "ffa": "checkpoint:fsync-dir:2",
    "hetlora": "round:aggregate:2",
    "norm_replication": "checkpoint:write:2",
    "replication": "round:record:2",
    "zero_padding": "checkpoint:prune:3",
}
CASES = [  # FLoRA at every point (it also writes merged rounds), every other method at one
    *[("flora", point) for point in [*POINTS, "merged:write:2", "merged:rename:2"]],
    *[
        (method, OTHERS.get(method, "checkpoint:rename:2"))
        for method in available_aggregators()
        if method != "flora"
    ],
]


def _fedlora(*args: str, kill_at: str | None = None) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("FEDLORA_KILL_AT", None)
    if kill_at is not None:
        env["FEDLORA_KILL_AT"] = kill_at
    command = [sys.executable, "-m", "fedlora.cli", "run", *args, "--no-progress"]
    return subprocess.run(command, env=env, capture_output=True, check=False).returncode


def _config(tmp_path: Path, model_dir: Path, method: str) -> Path:
    ranks = [4, 4, 4, 4] if method == "fedit" else [2, 4, 4, 8]
    return write_tiny_config(
        tmp_path / f"{method}.toml",
        model_dir,
        rounds=3,
        options={"ranks": ranks},
        method=method,
    )


_REFERENCES: dict[str, Path] = {}


def _reference(tmp_path_factory: pytest.TempPathFactory, model_dir: Path, method: str) -> Path:
    """An uninterrupted run of ``method``, in a subprocess as the killed ones (shared)."""
    if method not in _REFERENCES:
        root = tmp_path_factory.mktemp(f"reference-{method}")
        out = root / "run"
        assert _fedlora(str(_config(root, model_dir, method)), "--out", str(out)) == 0
        _REFERENCES[method] = out
    return _REFERENCES[method]


def _assert_identical(run: Path, reference: Path) -> None:
    ours, theirs = read_metrics(run / "metrics.jsonl"), read_metrics(reference / "metrics.jsonl")
    assert [r.round for r in ours] == [r.round for r in theirs] == [0, 1, 2, 3]
    for a, b in zip(ours, theirs, strict=True):
        assert (a.clients, a.ranks, a.train_loss, a.test_loss) == (
            b.clients,
            b.ranks,
            b.train_loss,
            b.test_loss,
        ), f"round {a.round}"
        assert (a.bytes_up, a.bytes_down) == (b.bytes_up, b.bytes_down), f"round {a.round}"
    state = load_checkpoint(run / "checkpoint").state
    expected = load_checkpoint(reference / "checkpoint").state
    assert state.round == expected.round == 3
    for name, factors in expected.modules.items():
        assert torch.equal(state.modules[name].A, factors.A), name
        assert torch.equal(state.modules[name].B, factors.B), name
    for name, tensor in expected.dense.items():
        assert torch.equal(state.dense[name], tensor), name
    assert RunDir(run).is_finished()


@pytest.mark.parametrize(("method", "point"), CASES, ids=[f"{m}-{p}" for m, p in CASES])
def test_a_run_killed_anywhere_resumes_to_the_same_numbers(
    tiny_bert_dir: Path,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    method: str,
    point: str,
) -> None:
    reference = _reference(tmp_path_factory, tiny_bert_dir, method)
    out = tmp_path / "run"
    config = _config(tmp_path, tiny_bert_dir, method)
    assert _fedlora(str(config), "--out", str(out), kill_at=point) == -9  # SIGKILL
    assert not RunDir(out).is_finished()
    if RunDir(out).has_checkpoint():
        kept = load_checkpoint(out / "checkpoint").state.round
        assert _fedlora("--resume", str(out)) == 0
        starts = ["new", f"resumed after round {kept}"]
    else:  # killed before the first checkpoint: a run starts over
        assert _fedlora(str(config), "--out", str(out), "--overwrite") == 0
        starts = ["new"]
    _assert_identical(out, reference)
    assert [entry["start"] for entry in read_environment(out)] == starts  # each start, said


def test_a_run_killed_while_its_updates_are_on_disk_resumes_to_the_same_numbers(
    tiny_bert_dir: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Killed as round 2 aggregates its spilled updates: their files stay behind, and the
    # resumed run removes them and ends as the uninterrupted in-memory one.
    reference = _reference(tmp_path_factory, tiny_bert_dir, "flexlora")
    out = tmp_path / "run"
    # Typed as the **overrides it goes to: a dict[str, str] could, for mypy, hold `rounds`.
    spill: dict[str, Any] = {"aggregation.spill": "disk"}
    config = write_tiny_config(
        tmp_path / "disk.toml",
        tiny_bert_dir,
        rounds=3,
        options={"ranks": [2, 4, 4, 8]},
        **spill,
    )
    assert _fedlora(str(config), "--out", str(out), kill_at="round:aggregate:2") == -9
    stale = sorted(p.name for p in (out / "scratch" / "round-00002").iterdir())
    assert len(stale) == 2 and stale[0].startswith("client-")
    assert _fedlora("--resume", str(out)) == 0
    assert not (out / "scratch").exists()
    _assert_identical(out, reference)


# ---------------------------------------------------------------------------------- damage


def _finished(tmp_path: Path, model_dir: Path) -> Path:
    """The directory of a finished 3-round run."""
    out = tmp_path / "run"
    config = _config(tmp_path, model_dir, "flexlora")
    assert main(["run", str(config), "--out", str(out), "--no-progress"]) == 0
    return out


def _rewrite(path: Path, change: Any) -> None:
    """Rewrite a checkpoint file with ``change(meta, tensors)`` applied (checksum kept)."""
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads((handle.metadata() or {})["fedlora"])
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    change(meta, tensors)
    save_file(tensors, str(path), metadata={"fedlora": json.dumps(meta)})


def _set_round(value: int) -> Any:
    def change(meta: dict[str, Any], tensors: dict[str, Any]) -> None:
        meta["round"] = value

    return change


def _huge_value(meta: dict[str, Any], tensors: dict[str, Any]) -> None:
    key = next(k for k in sorted(tensors) if k.startswith("lora/"))
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = 1e30


def _other_seed(meta: dict[str, Any], tensors: dict[str, Any]) -> None:
    meta["seed"] = 7


def _other_config(meta: dict[str, Any], tensors: dict[str, Any]) -> None:
    meta["config"] = config_digest("[train]\nlr = 0.5\n")


def _nan(meta: dict[str, Any], tensors: dict[str, Any]) -> None:
    key = sorted(tensors)[0]
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = float("nan")


@pytest.mark.parametrize(
    "damage",
    ["bytes", "round 99", "round -1", "value 1e30", "seed", "config", "nan", "truncated", "empty"],
)
def test_a_damaged_checkpoint_is_never_used(
    tiny_bert_dir: Path, tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    out = _finished(tmp_path, tiny_bert_dir)
    reference = tmp_path / "reference"
    shutil.copytree(out, reference)
    (out / "summary.md").unlink()  # unfinished again: resumable from round 3
    newest = out / "checkpoint" / "round-00003.safetensors"
    if damage == "bytes":
        data = bytearray(newest.read_bytes())
        data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
        newest.write_bytes(bytes(data))
    elif damage == "truncated":
        newest.write_bytes(newest.read_bytes()[:-100])
    elif damage == "empty":
        newest.write_bytes(b"")
    else:
        change = {
            "round 99": _set_round(99),
            "round -1": _set_round(-1),
            "value 1e30": _huge_value,
            "seed": _other_seed,
            "config": _other_config,
            "nan": _nan,
        }[damage]
        _rewrite(newest, change)
    # The damaged round-3 checkpoint is refused with a warning; round 2's is used and round 3
    # runs again, to the same numbers.
    assert main(["run", "--resume", str(out), "--no-progress"]) == 0
    assert "checkpoint round-00003.safetensors is not usable" in caplog.text
    _assert_identical(out, reference)


def test_a_checkpoint_tied_to_the_whole_config_still_resumes(
    tiny_bert_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Checkpoints written before 2026-11-26 carry the digest of the whole config (every key,
    # defaults included); they are still this run's.
    out = _finished(tmp_path, tiny_bert_dir)
    reference = tmp_path / "reference"
    shutil.copytree(out, reference)
    (out / "summary.md").unlink()
    whole = load_config(str(out / "config.toml")).to_toml()

    def legacy(meta: dict[str, Any], tensors: dict[str, Any]) -> None:
        meta["config"] = config_digest(whole)

    _rewrite(out / "checkpoint" / "round-00003.safetensors", legacy)
    assert main(["run", "--resume", str(out), "--no-progress"]) == 0
    assert "not usable" not in caplog.text
    _assert_identical(out, reference)


def test_no_usable_checkpoint_stops_with_one_line(
    tiny_bert_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _finished(tmp_path, tiny_bert_dir)
    (out / "summary.md").unlink()
    for path in (out / "checkpoint").iterdir():
        path.write_bytes(b"not a checkpoint")
    capsys.readouterr()
    before = (out / "metrics.jsonl").read_text()
    assert main(["run", "--resume", str(out), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    (line,) = [x for x in error.splitlines() if x.startswith("fedlora: error:")]
    assert "no usable checkpoint" in line
    assert (out / "metrics.jsonl").read_text() == before  # nothing already saved is lost
    with pytest.raises(FedloraError, match="no checkpoint in"):
        load_checkpoint(tmp_path / "nowhere")


def test_a_torn_metrics_line_is_repaired_and_a_missing_round_refused(
    tiny_bert_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _finished(tmp_path, tiny_bert_dir)
    (out / "summary.md").unlink()
    metrics = out / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    metrics.write_text("".join(lines) + lines[-1][:40])  # a crash mid-write of a fifth line
    assert main(["run", "--resume", str(out), "--no-progress"]) == 0
    assert [r.round for r in read_metrics(metrics)] == [0, 1, 2, 3]
    (out / "summary.md").unlink()
    metrics.write_text("".join(lines[:2] + lines[3:]))  # round 2 is gone
    assert main(["run", "--resume", str(out), "--no-progress"]) == 2
    assert "holds rounds [0, 1, 3], not 0..3" in capsys.readouterr().err
