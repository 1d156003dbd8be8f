"""What one local round does to a client of each rank tier, from a finished run's final state.

FlexLoRA serves a client of rank ``r`` the global update truncated to ``r`` and averages what it
sends back.  Whether low-rank clients hurt the average (the populations' uniform cell) depends on
what their local round does, which the run's metrics do not show.  This probe takes a fixed
sample of the run's clients and serves each of them the final global state at every tier the
run could train: same client, same rows, same batches and seed, only the tier differs.  Each
then trains one local round with the run's settings, and per client and tier we record

- the loss of the served model on the client's own rows (eval mode), before and after the round;
- how far the round moved its update: ``||dW_after - dW_served||_F``, and that divided by
  ``||dW_served||_F``, means over modules, with ``dW = s B A`` the effective update (``s`` =
  alpha/r, or alpha/sqrt(r) with rsLoRA).

Written to ``docs/results/<suite>/local_steps.csv`` (one line per run, tier and client) and
``local_steps.md`` (per run and tier: the means, and in how many clients the round raised the
loss on the client's own rows).  ``--set`` changes how the clients train from the same state
(``train.lr=0.002``, ``model.use_rslora=true``), ``--name`` the output files' name::

    python experiments/local_steps.py SUITE/RUN [SUITE/RUN ...] [--clients 40]
        [--set KEY=VALUE ...] [--name local_steps]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from diagnose import final_model, write_csv
from fedlora.commands.quiet import quiet_libraries
from fedlora.engine.evaluation import held_out_loss
from fedlora.engine.transport import TrainTask
from fedlora.lora import LoraFactors
from fedlora.runs import RunDir
from suites import RESULTS, RUNS

COLUMNS = (
    "run",
    "settings",
    "tier",
    "client",
    "rows",
    "loss_served",
    "loss_after",
    "train_loss",
    "move",
    "relative_move",
)


def moves(
    served: Mapping[str, LoraFactors], trained: Mapping[str, LoraFactors]
) -> tuple[float, float]:
    """The means over modules of ``||dW_trained - dW_served||_F`` and of that divided by
    ``||dW_served||_F``."""
    absolute, relative = [], []
    for name, start in served.items():
        before = start.delta()
        moved = float(torch.linalg.matrix_norm(trained[name].delta() - before))
        absolute.append(moved)
        relative.append(moved / float(torch.linalg.matrix_norm(before)))
    return statistics.fmean(absolute), statistics.fmean(relative)


def probe(run: RunDir, clients: int, overrides: Sequence[str] = ()) -> list[list[object]]:
    """The probe's lines for one finished run (none for a merging method)."""
    model = final_model(run, overrides)
    if model is None:
        return []
    experiment, state, _ = model
    trainer = experiment.client_trainer()
    shapes = experiment.model.module_shapes()
    batch = experiment.config.train.eval_batch_size
    sample = np.random.default_rng(0).choice(len(experiment.partitions), clients, replace=False)
    lines: list[list[object]] = []
    for tier in dict.fromkeys(experiment.policy.possible_tiers()):
        rank_map = tier.capped_rank_map(shapes)
        served = state.factors_for(rank_map, experiment.lora)
        for client in sorted(int(c) for c in sample):
            rows = experiment.partitions[client]
            experiment.model.activate(rank_map, experiment.lora)
            experiment.model.load(served, state.dense)
            before = held_out_loss(experiment.model, experiment.train, rows, batch)
            task = TrainTask(
                client=client, round=state.round + 1, factors=served, dense=state.dense
            )
            reply = trainer.train(task)
            after = held_out_loss(experiment.model, experiment.train, rows, batch)
            if reply.update is None:
                raise SystemExit(f"{run.path}: client {client} did not train: {reply.error}")
            lines.append(
                [
                    run.path.name,
                    " ".join(overrides) or "as run",
                    tier.name,
                    client,
                    len(rows),
                    round(before, 4),
                    round(after, 4),
                    round(reply.train_loss, 4),
                    *(round(x, 4) for x in moves(served, reply.update.modules)),
                ]
            )
    return lines


def summary(lines: list[dict[str, str]]) -> str:
    """Per run and tier, in the CSV's order: the clients' mean losses and move, and how many of
    them ended the round with a higher loss on their own rows than they were served."""
    groups: dict[tuple[str, str, str], list[dict[str, str]]] = {}
    for line in lines:
        groups.setdefault((line["run"], line["settings"], line["tier"]), []).append(line)
    table = [
        "| run | settings | tier | clients | own-rows loss served | after the round "
        "| mean training loss | round raised the loss | move of the update "
        "| relative to the served update |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (run, settings, tier), group in groups.items():

        def mean(column: str, group: list[dict[str, str]] = group) -> float:
            return statistics.fmean(float(line[column]) for line in group)

        raised = sum(float(x["loss_after"]) > float(x["loss_served"]) for x in group)
        table.append(
            f"| {run} | {settings} | {tier} | {len(group)} | {mean('loss_served'):.3f} "
            f"| {mean('loss_after'):.3f} | {mean('train_loss'):.3f} | {raised} of {len(group)} "
            f"| {mean('move'):.4f} | {mean('relative_move'):.3f} |"
        )
    return "\n".join(table) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="SUITE/RUN, e.g. flexlora_populations_dbpedia/x")
    parser.add_argument("--clients", type=int, default=40, help="clients sampled per run")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="how clients train"
    )
    parser.add_argument("--name", default="local_steps", help="the output files' name")
    args = parser.parse_args(argv)
    quiet_libraries()  # a load report per served model would bury the results
    suites = {name.partition("/")[0] for name in args.runs}
    if len(suites) != 1:
        raise SystemExit(f"give runs of one suite, got {sorted(suites)}")
    lines = []
    for name in args.runs:
        run = RunDir(RUNS / name)
        if not run.is_finished():
            raise SystemExit(f"{run.path}: not a finished run")
        lines += probe(run, args.clients, args.set)
    folder: Path = RESULTS / suites.pop()
    write_csv(folder / f"{args.name}.csv", COLUMNS, lines)
    named = [dict(zip(COLUMNS, map(str, line), strict=True)) for line in lines]
    (folder / f"{args.name}.md").write_text(summary(named), encoding="utf-8")
    print(f"{len(lines)} client rounds -> {folder / f'{args.name}.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
