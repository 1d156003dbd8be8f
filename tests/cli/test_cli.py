"""The fedlora command: one-line errors with exit code 2, no overwrite, every subcommand."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from fedlora.cli import main
from fedlora.config import describe_defaults, load_config
from tests.engine.helpers import tiny_causal_config, write_tiny_config
from tests.model.builders import tiny_model


def _fedlora(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedlora.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "train.lr=-1"], "train.lr: Input should be greater than 0"),
        (["--set", "train.learning_rate=1"], "train.learning_rate: unknown key"),
        (["--set", "run.rounds=many"], "run.rounds: Input should be a valid integer"),
        (["--set", "run.fraction=1.5"], "run.fraction: Input should be less than or equal to 1"),
        (["--set", "run.clients_per_round=50"], "clients_per_round (50) exceeds num_clients"),
        (["--set", "train.steps=0", "--set", "train.epochs=0"], "steps or epochs must be positive"),
        (["--set", "aggregation.method=flexlroa"], "did you mean 'flexlora'"),
        (["--set", "ranks.policy=proportional"], "rank policy"),
        (["--set", "ranks.options={high=0}"], "high"),
        (["--set", "data.partition=dirichlett"], "partitioner"),
        (["--set", "data.dataset=imagenet"], "unknown dataset 'imagenet'"),
        (["--set", "data.dataset=/no/such/file.csv"], "data.dataset: /no/such/file.csv: file not"),
        (["--set", "model.name=/no/such/model"], "/no/such/model"),
        (["--set", "run.num_clients=5000"], "5000 clients but only"),
        (["nothing.toml"], "config file nothing.toml does not exist"),
        (["--set", "run.rounds=true"], "run.rounds: Input should be a valid integer"),
        (["--set", "train.lr=inf"], "train.lr: Input should be a finite number"),
        (["--set", "model.lora_alpha=nan"], "model.lora_alpha: Input should be a finite number"),
        (["--set", "aggregation.method=fedit"], "fedit averages factors of one rank"),
        (
            ["--set", "ranks.policy=fixed", "--set", "ranks.options={rank=0}"],
            "ranks.options: rank must be a positive integer rank, got 0",
        ),
        (
            ["--set", "ranks.policy=loss_based", "--set", "ranks.options={fraction=2}"],
            "ranks.options: fraction must be a number in [0, 1], got 2",
        ),
        (["--set", "lr"], "expected key=value"),
        (["--set", "task=llm"], "task: Input should be 'classification' or 'causal-lm'"),
        (
            ["--set", "task=causal-lm", "--set", "data.dataset=ag_news"],
            "data.dataset: 'ag_news' is a classification dataset",
        ),
        (["--set", "task=causal-lm", "--set", "instruct.template=chatml"], "instruct.template"),
        (
            ["--set", "task=causal-lm", "--set", "data.dataset=/no/such/instructions.json"],
            "no such file or folder",
        ),
        (["--set", "model.device=gpu"], "model.device: must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
        (["--set", "model.device=cuda:99"], "model.device: 'cuda:99' asked for, but torch"),
        (["--set", "model.dtype=half"], "model.dtype: Input should be 'float32'"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(
    args: list[str],
    message: str,
    tmp_path: Path,
    shared_data_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEDLORA_DATA", str(shared_data_dir))
    out = tmp_path / "run"
    assert main(["run", *args, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("fedlora: error:")]
    assert len(lines) == 1, err
    assert message in lines[0]
    assert not (out / "metrics.jsonl").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give --root-certificates CA.pem for a TLS SuperLink, or --insecure"),
        (["--insecure", "--resume"], "continues the run in --out with its saved config"),
        (["--insecure", "--rounds", "40"], "flower-run --rounds continues an existing run"),
        (["--root-certificates", "/no/such/ca.pem"], "--root-certificates /no/such/ca.pem: no"),
    ],
)
def test_flower_run_usage_errors_are_one_line_before_any_superlink_is_contacted(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["flower-run", "--superlink", "127.0.0.1:9", *args]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fedlora: error:"), lines
    assert message in lines[0]


def test_the_installed_command_exits_2_without_a_traceback(tmp_path: Path) -> None:
    done = _fedlora("run", "--set", "train.lr=-1", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "fedlora: error: config: train.lr: Input should be greater than 0"
    )
    assert "Traceback" not in done.stderr


def test_argument_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["run", "--no-such-flag"])
    assert caught.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["run", "flower-run"])
@pytest.mark.parametrize("rounds", ["0", "-3", "4.5", "x"])
def test_rounds_must_be_a_whole_number_of_at_least_one(
    command: str, rounds: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main([command, "--rounds", rounds])
    assert caught.value.code == 2
    assert f"argument --rounds: {rounds!r} is not a whole number >= 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "arguments",
    [
        ["flower-sim", "--round-timeout"],
        ["flower-run", "--superlink", "127.0.0.1:9093", "--round-timeout"],
        ["flower-run", "--superlink", "127.0.0.1:9093", "--timeout"],
    ],
)
@pytest.mark.parametrize("seconds", ["0", "-5", "nan", "inf", "soon"])
def test_timeouts_must_be_seconds_above_zero(
    arguments: list[str], seconds: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main([*arguments, seconds])
    assert caught.value.code == 2
    assert f"argument {arguments[-1]}: {seconds!r} is not a number of seconds above 0" in (
        capsys.readouterr().err
    )


def test_rank_above_the_layer_dimension_is_refused(
    tiny_bert_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "run",
            "--set",
            f"model.name={tiny_bert_dir}",
            "--set",
            "data.dataset=synthetic",
            "--set",
            "ranks.policy=fixed",
            "--set",
            "ranks.options={rank=64}",
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
        ]
    )
    assert code == 2
    assert "asks rank 64" in capsys.readouterr().err


def test_a_model_folder_without_a_tokenizer_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "bert-without-tokenizer"
    tiny_model("bert").save_pretrained(folder)
    config = write_tiny_config(tmp_path / "tiny.toml", folder)
    assert main(["run", str(config), "--no-progress"]) == 2
    error = capsys.readouterr().err.splitlines()[-1]  # after the run's header
    assert error.startswith(f"fedlora: error: model {str(folder)!r}: folder {folder} has no ")
    assert error.endswith("save the tokenizer beside the model")


def test_config_defaults_lists_every_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--defaults"]) == 0
    printed = capsys.readouterr().out
    keys = [key for key, _, _ in describe_defaults()]
    assert len(keys) > 30
    for key in keys:
        assert key in printed


def test_config_defaults_are_one_line_toml_that_reads_back() -> None:
    defaults = load_config(None).model_dump()
    for key, value, _ in describe_defaults():
        section, _, name = key.rpartition(".")
        expected = defaults[section][name] if section else defaults[name]
        assert "\n" not in value, key
        assert tomllib.loads(f"v = {value}")["v"] == expected, key


def test_config_defaults_keep_bracketed_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--defaults"]) == 0
    printed = capsys.readouterr().out
    bracketed = [
        part
        for row in describe_defaults()
        for cell in row
        for part in re.findall(r"[\[{][^\]}]*[\]}]", cell)
    ]
    assert {"[low, high]", '["text"]', "{high = 20, low = 5, fraction = 0.2}"} <= set(bracketed)
    for part in bracketed:
        assert part in printed


def test_config_prints_resolved_toml(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--set", "train.lr=0.01", "--set", "run.rounds=3"]) == 0
    printed = capsys.readouterr().out
    assert "lr = 0.01" in printed
    assert "rounds = 3" in printed


@pytest.mark.slow
def test_run_then_refuse_overwrite_then_inspect_plot_and_compare(
    tiny_bert_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_tiny_config(tmp_path / "tiny.toml", tiny_bert_dir)
    assert main(["run", str(config), "--no-progress"]) == 0
    summary = (tmp_path / "run" / "summary.md").read_text()
    assert "final (round 2): test accuracy" in summary
    assert "baseline `majority_class` (same test set): test accuracy" in summary

    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert main(["run", str(config), "--no-progress"]) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before

    assert main(["inspect", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out  # the headers wrap ("test" above "accuracy") at 80 columns
    assert "accuracy" in printed and "macro-F1" in printed
    assert "baseline majority_class on the same test set: test accuracy 0." in printed
    assert main(["plot", str(tmp_path / "run"), "--out", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").stat().st_size > 1000

    compare_dir = tmp_path / "cmp"
    code = main(
        [
            "compare",
            str(config),
            "--aggregators",
            "flexlora,replication",
            "--seeds",
            "0,1",
            "--out",
            str(compare_dir),
            "--no-progress",
        ]
    )
    assert code == 0
    table = (compare_dir / "comparison.md").read_text()
    assert "| flexlora | 2 |" in table
    assert "| replication | 2 |" in table
    assert (compare_dir / "comparison.png").stat().st_size > 1000
    csv_lines = (compare_dir / "comparison.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in csv_lines] == [
        "method",
        "flexlora",
        "replication",
        "(untuned model)",
        "(baseline: majority_class)",
    ]
    assert sorted(p.name for p in compare_dir.iterdir() if p.is_dir()) == [
        "flexlora-seed0",
        "flexlora-seed1",
        "replication-seed0",
        "replication-seed1",
    ]


@pytest.mark.slow
def test_causal_lm_run_inspect_and_compare_with_a_method_override(
    tiny_llama_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tiny_causal_config(tiny_llama_dir, tmp_path / "run", **{"run.rounds": 1})
    path = tmp_path / "causal.toml"
    path.write_text(config.to_toml(), encoding="utf-8")
    assert main(["run", str(path), "--no-progress"]) == 0
    assert "final (round 1): test score" in (tmp_path / "run" / "summary.md").read_text()
    assert main(["inspect", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out
    assert "Rouge-L" in printed and "score" in printed
    assert "baseline copy_input on the same test set: test score 0." in printed

    compare_dir = tmp_path / "cmp"
    args = ["compare", str(path), "--aggregators", "flexlora,fedit", "--out", str(compare_dir)]
    fixed = [
        "--set-for",
        "fedit",
        "ranks.policy=fixed",
        "--set-for",
        "fedit",
        "ranks.options={rank=2}",
    ]
    assert main([*args, "--set-for", "hetlora", "train.lr=1", "--no-progress"]) == 2
    assert "'hetlora' is not in --aggregators" in capsys.readouterr().err
    assert main([*args, *fixed, "--no-progress"]) == 0
    table = (compare_dir / "comparison.md").read_text()
    assert "final test score" in table and "| fedit | 1 |" in table
    fedit = (compare_dir / "fedit-seed0" / "config.toml").read_text()
    assert 'policy = "fixed"' in fedit
    assert 'policy = "list"' in (compare_dir / "flexlora-seed0" / "config.toml").read_text()


def test_config_files_and_run_folders_that_cannot_serve_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'[run]\nname = "caf\xe9"\n')
    plain_file = tmp_path / "plain-file"
    plain_file.write_text("x")
    cases = [
        (["run", str(folder)], f"config file {folder} is a folder"),
        (["run", str(latin)], f"config file {latin} is not UTF-8 text (line 2, byte 17:"),
        (["run", "--out", str(plain_file)], f"run directory {plain_file} is a file"),
        (["run", "--out", str(plain_file / "x")], f"lies under a file, {plain_file}"),
        (["run", "--out", str(tmp_path)], "holds files but no run"),
    ]
    for args, message in cases:
        assert main([*args, "--no-progress"]) == 2, args
        lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("fedlora: error")]
        assert len(lines) == 1 and message in lines[0], (args, lines)


def test_overwrite_removes_only_what_a_run_wrote(tiny_bert_dir: Path, tmp_path: Path) -> None:
    config = write_tiny_config(tmp_path / "tiny.toml", tiny_bert_dir, rounds=1)
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--no-progress"]) == 0
    mine = [out / "notes.txt", out / "plots" / "my-figure.svg", out / "checkpoint" / "README"]
    for path in mine:
        path.write_text("kept")
    assert main(["run", str(config), "--out", str(out), "--overwrite", "--no-progress"]) == 0
    assert all(path.read_text() == "kept" for path in mine)
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == [
        "README",
        "round-00001.safetensors",
    ]
