"""Aggregation of rank-heterogeneous LoRA updates: pure torch, no transformers, no Flower."""

from fedlora.aggregation.base import Aggregator
from fedlora.aggregation.fedit import FedIT
from fedlora.aggregation.ffa import FFA
from fedlora.aggregation.flexlora import FlexLoRA
from fedlora.aggregation.flora import FLoRA
from fedlora.aggregation.hetlora import HetLoRA, norm_weights, self_pruning_penalty, update_norm
from fedlora.aggregation.registry import (
    aggregator_class,
    aggregator_options,
    available_aggregators,
    get_aggregator,
)
from fedlora.aggregation.replication import Replication
from fedlora.aggregation.state import GlobalState
from fedlora.aggregation.svd import TruncatedSVD, choose_method, top_svd_of_product, top_svd_of_sum
from fedlora.aggregation.weights import client_weights
from fedlora.aggregation.zero_padding import ZeroPadding

__all__ = [
    "FFA",
    "Aggregator",
    "FLoRA",
    "FedIT",
    "FlexLoRA",
    "GlobalState",
    "HetLoRA",
    "Replication",
    "TruncatedSVD",
    "ZeroPadding",
    "aggregator_class",
    "aggregator_options",
    "available_aggregators",
    "choose_method",
    "client_weights",
    "get_aggregator",
    "norm_weights",
    "self_pruning_penalty",
    "top_svd_of_product",
    "top_svd_of_sum",
    "update_norm",
]
