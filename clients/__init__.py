"""What devices hold and do: datasets, non-IID partitions, compact models, batched training, evaluation.

Shared pieces sit at the top (``params``, ``streams``, ``checks``, ``cache``,
``partition``, the ``datasets`` registry, ``train_config``); the two workloads
are subpackages over them, and classification never imports recommendation.
Importing ``clients`` registers every built-in dataset and model.
"""

from clients import classification, recommendation
from clients.datasets import DATASETS, load_dataset, register_dataset
from clients.errors import ClientsError
from clients.params import ParamStack
from clients.partition import partition_indices
from clients.train_config import TrainConfig

__all__ = [
    "DATASETS",
    "ClientsError",
    "ParamStack",
    "TrainConfig",
    "classification",
    "load_dataset",
    "partition_indices",
    "recommendation",
    "register_dataset",
]
