"""The engine: build an experiment from a config and drive its rounds through a transport."""

from fedlora.engine.client import ClientTrainer, train_config
from fedlora.engine.driver import PHASES, RoundDriver, RunResult
from fedlora.engine.evaluation import Evaluation, test_metrics
from fedlora.engine.experiment import Experiment, build_experiment, load_data
from fedlora.engine.merging import MergedBase
from fedlora.engine.seeds import sample_clients
from fedlora.engine.simulation import run_experiment, run_in_process
from fedlora.engine.traffic import Traffic
from fedlora.engine.transport import ClientReply, InProcessTransport, Roster, TrainTask, Transport
from fedlora.lora import MergedRound

__all__ = [
    "PHASES",
    "ClientReply",
    "ClientTrainer",
    "Evaluation",
    "Experiment",
    "InProcessTransport",
    "MergedBase",
    "MergedRound",
    "Roster",
    "RoundDriver",
    "RunResult",
    "Traffic",
    "TrainTask",
    "Transport",
    "build_experiment",
    "load_data",
    "run_experiment",
    "run_in_process",
    "sample_clients",
    "test_metrics",
    "train_config",
]
