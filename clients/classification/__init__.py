"""Classification workloads: labelled datasets, compact classifiers, batched SGD, accuracy."""

from clients.classification import online as _online  # noqa: F401  (registers the download-once datasets)
from clients.classification.datasets import Dataset
from clients.classification.evaluation import evaluate_models
from clients.classification.fleet import FleetData, pack_fleet
from clients.classification.models import MODELS, build_model, register_model
from clients.classification.training import train_classifier

__all__ = [
    "MODELS",
    "Dataset",
    "FleetData",
    "build_model",
    "evaluate_models",
    "pack_fleet",
    "register_model",
    "train_classifier",
]
