"""The Flower ClientApp: one node = one client, trained by the engine's :class:`ClientTrainer`.

A node learns everything from the server's message (the resolved experiment config, its factors,
the merges it lacks, the round) and from its own ``--node-config``: ``partition-id`` and
``num-partitions`` (filled in by Flower's simulation), optionally ``lora-rank`` (the rank it can
afford), ``data-dir`` (where its copy of the datasets lives), ``data-file`` (a file of its own
that never leaves it, instead of its share of the run's dataset) and ``device`` (where it trains,
instead of the config's ``model.device``; ``auto``, the default, is the node's own first GPU or
its CPU).  Whatever its device and ``model.dtype``, a node replies with float32 factors.

A node builds only its own client's rows (:mod:`fedlora.engine.node`), tokenised once into its
cache, and its model, once per process; the merged rounds it applied (FLoRA) are kept on its disk
too, so a node that starts a fresh process per message reads both back instead of rebuilding
them.

Only the train handler needs torch, transformers and PEFT, so they are imported with
:mod:`fedlora.flower.node_training` when a train message comes: a node answers the server's
identity query from a fresh process without them, in about a second instead of six.
"""

from __future__ import annotations

from collections.abc import Mapping

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedlora.flower.fields import CONFIG, integer

app = ClientApp()


@app.query()
def identify(msg: Message, context: Context) -> Message:
    """Tell the server which client this node is and the rank it announces."""
    node = context.node_config
    identity = ConfigRecord(
        {
            "partition-id": integer(node, "partition-id"),
            "num-partitions": integer(node, "num-partitions"),
            "lora-rank": announced_rank(node),
        }
    )
    return Message(content=RecordDict({CONFIG: identity}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Apply the merges this node lacks, load the served factors, train, reply with the update."""
    from fedlora.flower.node_training import train_reply

    return train_reply(msg, context)


def announced_rank(node_config: Mapping[str, object]) -> str | int:
    """A node's announced rank from its ``--node-config`` (``lora-rank=8`` or ``"r8"``)."""
    value = node_config.get("lora-rank", 0)
    return value if isinstance(value, int | str) else 0
