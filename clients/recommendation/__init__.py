"""Recommendation workloads: implicit-feedback interactions, MF and NeuMF, sparse training, HR/NDCG."""

from clients.recommendation.interactions import InteractionFleet, Interactions, pack_interactions
from clients.recommendation.metrics import DeviceModels, evaluate_devices
from clients.recommendation.models import RECOMMENDERS, Recommender, build_recommender, register_recommender
from clients.recommendation.training import train_recommender

__all__ = [
    "RECOMMENDERS",
    "DeviceModels",
    "InteractionFleet",
    "Interactions",
    "Recommender",
    "build_recommender",
    "evaluate_devices",
    "pack_interactions",
    "register_recommender",
    "train_recommender",
]
