"""fedlora's ClientApp, then a corrupted reply, by the node's partition.

Partition 0 replies honestly; partition 1 replaces the bytes of its first LoRA array with bytes
that are no array; partition 2 states ``num-examples = NaN``.  The server must drop the two
malformed replies, naming each node, and finish the round with the honest one.
"""

from __future__ import annotations

from flwr.app import Array, Context, Message
from flwr.clientapp import ClientApp

from fedlora.flower import client_app as honest
from fedlora.flower.fields import ARRAYS, METRICS

GARBAGE = b"these bytes are not a numpy array"

app = ClientApp()


@app.query()
def identify(msg: Message, context: Context) -> Message:
    return honest.identify(msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    reply = honest.train(msg, context)
    partition = context.node_config["partition-id"]
    if partition == 1:
        arrays = reply.content.array_records[ARRAYS]
        key = next(k for k in arrays if k.startswith("lora/"))
        arrays[key] = Array(
            dtype="float32", shape=arrays[key].shape, stype="numpy.ndarray", data=GARBAGE
        )
    elif partition == 2:
        reply.content.metric_records[METRICS]["num-examples"] = float("nan")
    return reply
