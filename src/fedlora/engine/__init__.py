"""The in-process engine: build an experiment from a config and run its rounds."""

from fedlora.engine.client import ClientResult, run_client, tensor_bytes, train_config
from fedlora.engine.evaluation import Evaluation, evaluate_global, test_metrics
from fedlora.engine.experiment import Experiment, build_experiment, load_data
from fedlora.engine.seeds import derive_seed, sample_clients
from fedlora.engine.simulation import RunResult, Simulation, run_in_process

__all__ = [
    "ClientResult",
    "Evaluation",
    "Experiment",
    "RunResult",
    "Simulation",
    "build_experiment",
    "derive_seed",
    "evaluate_global",
    "load_data",
    "run_client",
    "run_in_process",
    "sample_clients",
    "tensor_bytes",
    "test_metrics",
    "train_config",
]
