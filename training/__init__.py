"""Shared training layer: in-memory data sets and the one training loop (used by `search` and `compress`).

    from training import load_data, TrainConfig, fit, evaluate
    splits = load_data("digits")
    result = fit(model, splits.train, splits.val, TrainConfig(epochs=30, augment=splits.augment))
"""
from .data import AUGMENTS, DATASETS, DatasetInfo, Splits, TensorData, dataset_info, default_data_dir, load_data
from .loop import (CUDA_NAN_CHECK_EVERY, FitResult, TrainConfig, TrainingDiverged, augment_batch, crop_pad,
                   distillation_loss, evaluate, fit, predict_logits, resolve_device, set_seed)

__all__ = [
    "AUGMENTS", "DATASETS", "DatasetInfo", "Splits", "TensorData", "dataset_info", "default_data_dir", "load_data",
    "CUDA_NAN_CHECK_EVERY", "FitResult", "TrainConfig", "TrainingDiverged", "augment_batch", "crop_pad",
    "distillation_loss", "evaluate", "fit", "predict_logits", "resolve_device", "set_seed",
]
