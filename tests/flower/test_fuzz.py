"""Arbitrary malformed replies never stop the server or poison the global state.

A node can send anything: missing or extra records, metrics that are NaN, infinite, fractional
or absurd, arrays of the wrong shape, type or bytes.  Every such reply must end as a dropped
reply (or a valid update), the exchange and the round must go on, and the state stay finite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fedlora.engine import RoundDriver, build_experiment
from fedlora.engine.driver import _Timer
from fedlora.flower.fields import ARRAYS, METRICS
from fedlora.flower.transport import FlowerTransport
from fedlora.runs import RunDir
from tests.engine.helpers import tiny_config
from tests.flower.test_transport import FakeGrid, _echo, _nodes

NUMBERS = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, 1.5, 1e30, -1.0, float("nan"), float("inf")]),
)
VALID = {
    "client": 1,
    "num-examples": 10,
    "alpha": 16.0,
    "train-loss": 0.5,
    "steps": 2,
    "merged-round": 0,
}


@st.composite
def arrays(draw: Any, shapes: dict[str, tuple[int, int]]) -> dict[str, Array]:
    names = list(shapes)
    result: dict[str, Array] = {}
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from([*names, "junk"]))
        key = draw(st.sampled_from([f"lora/{name}/A", f"lora/{name}/B", f"dense/{name}", name]))
        if draw(st.booleans()):
            size = draw(st.integers(0, 12))
            data = draw(st.binary(min_size=0, max_size=64))
            dtype = draw(st.sampled_from(["float32", "int32", "weird"]))
            result[key] = Array(dtype=dtype, shape=(size,), stype="numpy.ndarray", data=data)
        else:
            shape = draw(st.lists(st.integers(0, 6), min_size=1, max_size=2))
            dtype = draw(st.sampled_from([np.float32, np.float64, np.float16, np.int32]))
            value = draw(st.sampled_from([0.0, 1.0, 1e30, float("nan"), float("inf")]))
            with np.errstate(all="ignore"):
                result[key] = Array(np.full(tuple(shape), value).astype(dtype))
    return result


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> Any:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1  # a ServerApp's
    out = tmp_path_factory.mktemp("fuzz") / "run"
    config = tiny_config(
        tiny_bert_dir, out, **{"run.num_clients": 4, "ranks.options": {"ranks": [2, 4, 4, 8]}}
    )
    experiment = build_experiment(config)
    driver = RoundDriver(experiment, RunDir.create(out, config, overwrite=False))
    return config, experiment, driver


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_a_malformed_reply_is_dropped_and_the_round_goes_on(world: Any, data: Any) -> None:
    config, experiment, driver = world
    shapes = experiment.module_shapes
    metrics: dict[str, Any] = {}
    for key, valid in VALID.items():  # each value valid, absent or fuzzed
        choice = data.draw(st.sampled_from(["valid", "valid", "absent", "fuzzed"]), label=key)
        if choice != "absent":
            metrics[key] = valid if choice == "valid" else data.draw(NUMBERS, label=key)
    try:
        content = RecordDict(
            {
                ARRAYS: ArrayRecord(data.draw(arrays(shapes), label="arrays")),
                METRICS: MetricRecord(metrics),
            }
        )
    except Exception:
        assume(False)
        raise

    def node(message: Message, context: Context) -> Message:
        if context.node_config["partition-id"] == 1:
            return Message(content=content, reply_to=message)
        return _echo(message, context)

    transport = FlowerTransport(
        FakeGrid(_nodes(), node), config, run_key="ab12", connect_timeout=1.0
    )
    driver.roster = transport.connect(4)
    state = experiment.initial_state()
    tiers = {c: experiment.policy.tier_of(c) for c in (0, 1, 2)}
    exchange = driver._exchange(transport, state, tiers, 1, False, _Timer(1, None))
    accepted, dropped = exchange.accepted, exchange.dropped
    assert {r.client for r in accepted} >= {0, 2}
    if 1 not in {r.client for r in accepted}:
        assert any(d.startswith("client 1:") for d in dropped), dropped
    new = driver._aggregate(accepted, state, 1, dropped, {})
    for factors in new.modules.values():
        assert bool(torch.isfinite(factors.A).all()) and bool(torch.isfinite(factors.B).all())
    for tensor in new.dense.values():
        assert bool(torch.isfinite(tensor).all())
