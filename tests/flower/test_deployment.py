"""A real loopback deployment: one SuperLink and three SuperNodes.

The config's rank policy is ``fixed`` at rank 1 where nodes announce ranks 2, 4 and 8, so a run
in which every client trained at 1 would show that the server ignored the ranks the nodes
announced in ``--node-config``.  Every message to a SuperNode starts a fresh ``flwr-clientapp``
process (for a train message, torch, transformers and PEFT are imported again), so runs here are
short, and the four ways a node can fail mid-round share one run;
the ServerApp killed mid-run and resumed with ``fedlora flower-run --resume`` must still end
with the numbers of the in-process runner, and so must that run continued to one more round
(``--rounds``).
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Sequence
from pathlib import Path

import pytest

from fedlora.cli import main
from fedlora.commands.flower import flower_run_config
from fedlora.config import load_config
from fedlora.flower.superlink import CONNECTION
from fedlora.runs import RunDir, read_metrics
from tests.flower.harness import (
    APP_DIR,
    FederationFactory,
    LocalFederation,
    assert_completed,
    assert_same_as_in_process,
    client_ranks,
    freeze_clientapp,
    freeze_executor,
    wait_for_checkpoint,
    write_node_key,
    write_tiny_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("flower")]

ANNOUNCED = [2, 4, 8]  # lora-rank of the SuperNodes serving partitions 0, 1, 2


def _start(federation: LocalFederation, nodes: int = 3, ranks: Sequence[int] = ANNOUNCED) -> None:
    """A SuperLink and ``nodes`` SuperNodes: node i serves partition i and announces ``ranks[i]``
    (none when ``ranks`` is shorter)."""
    federation.start_superlink()
    for partition in range(nodes):
        node = {"partition-id": partition, "num-partitions": nodes}
        if partition < len(ranks):
            node["lora-rank"] = ranks[partition]
        federation.start_supernode(node)
    federation.wait_for_nodes(nodes)


def _config(tmp_path: Path, model_dir: Path, rounds: int, clients: int = 3) -> Path:
    """Every client in every round, each at the rank its node announces (else rank 1)."""
    return write_tiny_config(
        tmp_path / "deploy.toml",
        model_dir,
        rounds=rounds,
        num_clients=clients,
        clients_per_round=clients,
        policy="fixed",
        options={"rank": 1},
    )


def _statuses(federation: LocalFederation) -> dict[int, str]:
    """Every node the SuperLink knows, by node id: ``online``, ``offline`` or ``registered``."""
    return {int(node["node-id"]): str(node["status"]) for node in federation.nodes()}


def _submit(
    federation: LocalFederation,
    config_path: Path,
    out_dir: Path,
    *,
    min_replies: int = 2,
    app: Path = APP_DIR,
) -> int:
    """Submit a run that completes with ``min_replies`` of the three clients."""
    return federation.submit(
        app,
        {
            "config": str(config_path),
            "out-dir": str(out_dir),
            "round-timeout": 120.0,
            "overrides": f"run.min_replies={min_replies}",
        },
    )


def _dropped(out_dir: Path, trained: list[int]) -> dict[int, str]:
    """The drop line of each client dropped in round 1, after checking that every client was
    sent the round and that exactly those of ``trained`` came back with a train loss."""
    (_, row) = read_metrics(out_dir / "metrics.jsonl")
    assert sorted(row.clients) == list(range(len(row.clients)))
    losses = dict(zip(row.clients, row.extra["client_train_loss"], strict=True))
    assert sorted(client for client, loss in losses.items() if loss is not None) == trained
    lines = row.extra["dropped"]  # a "round: ..." line would mean the round was not aggregated
    assert all(re.match(r"client \d+: ", line) for line in lines), lines
    dropped = {int(line.split(":")[0].removeprefix("client ")): line for line in lines}
    assert sorted(dropped) == sorted(set(losses) - set(trained)), lines
    assert len(dropped) == len(lines), lines
    return dropped


def _assert_announced_ranks(out_dir: Path, rounds: int) -> None:
    rows = read_metrics(out_dir / "metrics.jsonl")
    assert [row.round for row in rows] == list(range(rounds + 1))
    for row in rows[1:]:
        assert sorted(row.clients) == [0, 1, 2]
        assert row.extra["dropped"] == []
    assert client_ranks(rows) == {client: {rank} for client, rank in enumerate(ANNOUNCED)}


def test_nodes_train_at_their_announced_ranks(
    tmp_path: Path, tiny_bert_dir: Path, flower_federation: FederationFactory
) -> None:
    config_path = _config(tmp_path, tiny_bert_dir, rounds=1)
    out_dir = tmp_path / "deployed"
    federation = flower_federation("tls", tls=True)
    _start(federation)
    outcome = federation.run(
        APP_DIR,
        {"config": str(config_path), "out-dir": str(out_dir), "round-timeout": 120.0},
        timeout=300.0,
    )
    assert_completed(outcome)
    assert federation.close() == []
    _assert_announced_ranks(out_dir, rounds=1)

    # The in-process runner with the announced ranks as its rank list computes the same run.
    reference = load_config(str(config_path)).replace(
        {"ranks.policy": "list", "ranks.options": {"ranks": ANNOUNCED}}
    )
    assert_same_as_in_process(out_dir, reference, tmp_path)


def test_a_supernode_without_the_ca_certificate_cannot_join(
    flower_federation: FederationFactory,
) -> None:
    federation = flower_federation("no-ca", tls=True)
    federation.start_superlink()
    federation.start_supernode({"partition-id": 0, "num-partitions": 2})
    (trusted,) = federation.wait_for_nodes(1)
    # Neither the CA nor --insecure: the node cannot verify the SuperLink's certificate.
    untrusting = federation.start_supernode(
        {"partition-id": 1, "num-partitions": 2}, trust_ca=False, max_retries=1, max_wait_time=20
    )
    # Plain HTTP against the HTTPS port.
    insecure = federation.start_supernode(
        {"partition-id": 1, "num-partitions": 2},
        trust_ca=False,
        extra_args=["--insecure"],
        max_retries=1,
        max_wait_time=20,
    )
    # The TLS SuperLink drops the plaintext request; which of the two the node then sees
    # depends on timing (CI saw each).
    plaintext_refused = (
        "Server disconnected without sending a response",
        "Connection reset by peer",
    )
    for process, reasons in [
        (untrusting, ("CERTIFICATE_VERIFY_FAILED",)),
        (insecure, plaintext_refused),
    ]:
        assert process.popen.wait(timeout=120) != 0, process.log_tail()
        log = process.log_tail()
        assert "Exit Code: 305\nFailed to initialize the connection to the SuperLink" in log, log
        assert any(reason in log for reason in reasons), log
        assert "SuperNode ID" not in log
    assert _statuses(federation) == {int(trusted["node-id"]): "online"}


def test_supernode_authentication_admits_registered_nodes_only(
    tmp_path: Path, tiny_bert_dir: Path, flower_federation: FederationFactory
) -> None:
    config_path = write_tiny_config(
        tmp_path / "auth.toml",
        tiny_bert_dir,
        rounds=1,
        num_clients=2,
        clients_per_round=2,
        policy="fixed",
        options={"rank": 2},
    )
    out_dir = tmp_path / "deployed-auth"
    federation = flower_federation("auth", tls=True)
    federation.start_superlink(supernode_auth=True)
    keys = tmp_path / "keys"
    node_ids = []
    for partition in range(2):
        _, public = write_node_key(keys / f"sn{partition}")
        node_ids.append(federation.register_supernode(public))
    assert _statuses(federation) == dict.fromkeys(node_ids, "registered")
    members = [
        federation.start_supernode(
            {"partition-id": partition, "num-partitions": 2}, private_key=keys / f"sn{partition}"
        )
        for partition in range(2)
    ]
    federation.wait_for_nodes(2)
    assert [member.node_id() for member in members] == node_ids  # the ids registration gave

    stranger, _ = write_node_key(keys / "stranger")  # never registered
    refused = {
        "[code: 2004] Failed to activate SuperNode": federation.start_supernode(
            {"partition-id": 1, "num-partitions": 2}, private_key=stranger, max_retries=1
        ),
        "[code: 2001] SuperNode authentication is enabled": federation.start_supernode(
            {"partition-id": 1, "num-partitions": 2}, max_retries=1
        ),
    }
    for reason, process in refused.items():
        assert process.popen.wait(timeout=120) != 0, process.log_tail()
        log = process.log_tail()
        assert (
            f"Exit Code: 305\nFailed to initialize the connection to the SuperLink.\n{reason}"
            in log
        )
        assert "SuperNode ID" not in log
    assert _statuses(federation) == dict.fromkeys(node_ids, "online")

    outcome = federation.run(
        APP_DIR,
        {"config": str(config_path), "out-dir": str(out_dir), "round-timeout": 120.0},
        timeout=300.0,
    )
    assert_completed(outcome)
    (_, row) = read_metrics(out_dir / "metrics.jsonl")
    assert sorted(row.clients) == [0, 1]
    assert row.extra["dropped"] == []
    assert all(loss is not None for loss in row.extra["client_train_loss"])
    assert "left out" not in outcome.log


def test_nodes_that_fail_mid_round_are_dropped_each_with_its_reason(
    tmp_path: Path, tiny_bert_dir: Path, flower_federation: FederationFactory
) -> None:
    """Four of six nodes fail in the same round, each its own way; the round is aggregated from
    the two others (``run.min_replies=2``), and each failed node's client is dropped by name.

    - Node 2 is stopped (SIGTERM) after taking its train message. Flower answers for it with an
      error, or nothing comes before the round timeout, depending on timing.
    - Node 3 is frozen whole (SuperNode, superexec and ClientApp: SIGSTOP). Its heartbeats stop,
      so the SuperLink marks it offline and answers for it, unless the round timeout comes first.
    - Node 4's executor hangs before its train message. The SuperNode stays online and takes the
      message, but no ClientApp ever runs it: nobody answers, and only the round timeout ends
      the wait.
    - Node 5's ClientApp hangs after taking its message. It stops heartbeating to its SuperNode,
      which answers for it two heartbeat intervals (about 60 s) later, before the round timeout.
    """
    config_path = _config(tmp_path, tiny_bert_dir, rounds=1, clients=6)
    out_dir = tmp_path / "deployed-faults"
    federation = flower_federation("faults")
    _start(federation, nodes=6, ranks=())
    run_id = _submit(federation, config_path, out_dir)
    nodes = federation.supernodes
    node_ids = [node.node_id() for node in nodes]
    frozen = freeze_executor(federation, nodes[4])
    for victim, sig in [(nodes[2], signal.SIGTERM), (nodes[3], signal.SIGSTOP)]:
        victim.wait_for_log("Receiving: train message", timeout=180.0)
        federation.stop_supernode(victim, sig)
    frozen.append(freeze_clientapp(federation, nodes[5]))
    outcome = federation.wait_run(run_id, timeout=400.0)
    assert_completed(outcome)
    log = nodes[4].log_tail(10_000_000)
    assert "flwr-clientapp" not in log[log.index("Receiving: train message") :], log
    statuses = _statuses(federation)
    for hung in (nodes[4], nodes[5]):
        assert hung.alive()
        assert statuses[hung.node_id()] == "online"
    for pid in frozen:
        os.kill(pid, signal.SIGKILL)

    dropped = _dropped(out_dir, trained=[0, 1])
    either = r"(sent no reply within 120 s|sent an error: .*)"
    reasons = {
        2: either,
        3: either,
        4: re.escape("sent no reply within 120 s"),
        5: re.escape("sent an error: ClientApp stopped responding."),
    }
    assert sorted(dropped) == sorted(reasons)
    server_log = federation.log(run_id)
    for client, reason in reasons.items():
        line = dropped[client]
        assert re.fullmatch(rf"client {client}: node {node_ids[client]} {reason}", line), line
        assert f"WARNING fedlora.engine.driver: dropping {line}" in server_log
    assert (out_dir / "checkpoint" / "round-00001.safetensors").exists()
    assert RunDir(out_dir).is_finished()


MALFORMED_APP = Path(__file__).parent / "malformed_app"


def test_malformed_replies_of_deployed_nodes_are_dropped_by_node(
    tmp_path: Path, tiny_bert_dir: Path, flower_federation: FederationFactory
) -> None:
    """Over a real SuperLink, node 1 sends bytes that are no array and node 2 a NaN
    ``num-examples`` (malformed_app/malformed_client.py): both are dropped with their node ids
    and the round is aggregated from node 0's reply alone."""
    config_path = _config(tmp_path, tiny_bert_dir, rounds=1)
    out_dir = tmp_path / "deployed-malformed"
    federation = flower_federation("malformed")
    _start(federation)
    run_id = _submit(federation, config_path, out_dir, min_replies=1, app=MALFORMED_APP)
    outcome = federation.wait_run(run_id, timeout=300.0)
    assert_completed(outcome)

    dropped = _dropped(out_dir, trained=[0])
    garbage, nan = dropped[1], dropped[2]
    node_1, node_2 = (federation.supernodes[i].node_id() for i in (1, 2))
    assert re.fullmatch(rf"client 1: node {node_1} sent a malformed reply: \w+: .+", garbage)
    assert nan == (
        f"client 2: node {node_2} sent a malformed reply: "
        "FedloraError: metric 'num-examples' is nan"
    )
    log = federation.log(run_id)
    assert f"WARNING fedlora.engine.driver: dropping {nan}" in log
    assert f"WARNING fedlora.engine.driver: dropping {garbage}" in log
    assert (out_dir / "checkpoint" / "round-00001.safetensors").exists()
    assert RunDir(out_dir).is_finished()


def test_flower_run_resumes_a_run_whose_serverapp_was_killed_then_continues_it(
    tmp_path: Path, tiny_bert_dir: Path, flower_federation: FederationFactory
) -> None:
    # FLoRA, so that the nodes must also hold the merged rounds of the killed run's rounds.
    config_path = write_tiny_config(
        tmp_path / "deploy.toml",
        tiny_bert_dir,
        rounds=3,
        num_clients=3,
        clients_per_round=2,
        options={"ranks": [2, 4, 8]},
        method="flora",
    )
    out_dir = tmp_path / "deployed"
    federation = flower_federation("resume")
    _start(federation, ranks=())
    config = load_config(str(config_path)).replace({"run.out_dir": str(out_dir)})
    run_config = flower_run_config(config, out_dir, overwrite=False, round_timeout=120.0)
    run_id = federation.submit(APP_DIR, run_config)
    wait_for_checkpoint(out_dir, 1, federation, run_id)
    servers = [pid for pid, command in federation.processes() if "flwr-serverapp" in command]
    assert servers, list(federation.processes())
    for pid in servers:
        os.kill(pid, signal.SIGKILL)
    federation.cli.flwr("stop", str(run_id), CONNECTION, check=False)
    assert not RunDir(out_dir).is_finished()

    args = ["flower-run", "--superlink", federation.address, "--insecure"]
    assert main([*args, "--out", str(out_dir), "--resume"]) == 0
    rows = read_metrics(out_dir / "metrics.jsonl")
    assert [row.round for row in rows] == [0, 1, 2, 3]
    assert RunDir(out_dir).is_finished()
    assert main([*args, "--out", str(tmp_path / "no-such-run"), "--resume"]) == 1
    # The finished run continued to a fourth round: the run config's rounds reach the ServerApp.
    assert main([*args, "--out", str(out_dir), "--resume", "--rounds", "4"]) == 0
    assert [row.round for row in read_metrics(out_dir / "metrics.jsonl")] == [0, 1, 2, 3, 4]
    assert federation.close() == []

    assert_same_as_in_process(out_dir, config.replace({"run.rounds": 4}), tmp_path)


def test_a_supernode_that_restarts_gets_its_client_back(
    tmp_path: Path, tiny_bert_dir: Path, flower_federation: FederationFactory
) -> None:
    config_path = _config(tmp_path, tiny_bert_dir, rounds=3)
    out_dir = tmp_path / "deployed-rejoin"
    federation = flower_federation("rejoin")
    _start(federation)
    run_id = federation.submit(
        APP_DIR, {"config": str(config_path), "out-dir": str(out_dir), "round-timeout": 120.0}
    )
    wait_for_checkpoint(out_dir, 1, federation, run_id)
    victim = federation.supernodes[2]
    federation.stop_supernode(victim, signal.SIGKILL)
    federation.start_supernode({"partition-id": 2, "num-partitions": 3, "lora-rank": 8})
    outcome = federation.wait_run(run_id, timeout=400.0)
    assert_completed(outcome)
    rows = read_metrics(out_dir / "metrics.jsonl")
    assert [row.round for row in rows] == [0, 1, 2, 3]
    last = dict(zip(rows[3].clients, rows[3].extra["client_train_loss"], strict=True))
    assert last[2] is not None, rows[3].extra["dropped"]  # client 2 trained again
    assert "client 2 is back, on node" in federation.log(run_id)
