"""Downstream models, trained with the evaluation's code so the benchmark has no second trainer.

Classifier: the evaluation extractor's MONAI ResNet (`InHouseExtractor`, class head only) trained by
the shared `train_loop` (random left-right flips, translation and intensity augmentation, AdamW,
one-cycle schedule, bf16 autocast, inverse-frequency class weights). A DenseNet121 would be the textbook
choice but is far too slow on a CPU. Every `eval_every` steps the macro-F1 on the real validation split
is measured and the best weights are kept (early stopping within a fixed step budget, so arms get the
same compute).

Segmenter: the condition-fidelity `train_segmenter` (MONAI UNet, left-right flips), with the same early
stopping on the mean Dice of the real validation split.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from torch import nn

from synthmed.downstream.data import Labelled
from synthmed.evaluation.condition import per_image_scores, segment, train_segmenter
from synthmed.evaluation.features import ExtractorSettings, InHouseExtractor, class_weights, train_loop


@torch.no_grad()
def class_probabilities(model: InHouseExtractor, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N, K) softmax probabilities."""
    model.eval()
    head = _class_head(model)
    return torch.cat([F.softmax(head(model.backbone(b)).float(), 1) for b in images.split(batch_size)])


def train_classifier(
    train: Labelled,
    val: Labelled,
    num_classes: int,
    settings: ExtractorSettings,
    eval_every: int,
    model: InHouseExtractor | None = None,
) -> tuple[InHouseExtractor, dict[str, Any]]:
    """Train (or fine-tune ``model``) and return the weights with the best validation macro-F1."""
    if model is None:
        torch.manual_seed(settings.seed)  # weight initialisation
        model = InHouseExtractor(num_classes, settings.widths)
    weights = class_weights(train.labels, num_classes)
    best: dict[str, Any] = {"val_macro_f1": -1.0, "step": None, "state": None}

    head = _class_head(model)

    def batch_loss(x: torch.Tensor, y: torch.Tensor | None, _: torch.Generator) -> torch.Tensor:
        assert y is not None  # a classifier trains on labelled images
        return F.cross_entropy(head(model.backbone(x)).float(), y, weight=weights)

    def validate(step: int) -> None:
        if (step + 1) % eval_every and step != settings.steps - 1:
            return
        pred = class_probabilities(model, val.images).argmax(1)
        score = f1_score(val.labels, pred, average="macro", labels=range(num_classes), zero_division=0)
        if score > best["val_macro_f1"]:
            best.update(val_macro_f1=float(score), step=step + 1, state=copy.deepcopy(model.state_dict()))

    history = train_loop(model, train.images, train.labels, settings, batch_loss, validate)
    model.load_state_dict(best.pop("state"))
    return model.eval(), best | {"history": history}


def train_segmentation(
    train: Labelled, val: Labelled, steps: int, batch_size: int, seed: int, eval_every: int
) -> tuple[nn.Module, dict[str, Any]]:
    """Train a segmenter and return the weights with the best mean validation Dice."""
    best: dict[str, Any] = {"val_dice": -1.0, "step": None, "state": None}

    def validate(step: int, model: nn.Module) -> None:
        if (step + 1) % eval_every and step != steps - 1:
            return
        dice, _, _ = per_image_scores(segment(model, val.images), val.targets)
        if dice.mean() > best["val_dice"]:
            best.update(val_dice=float(dice.mean()), step=step + 1, state=copy.deepcopy(model.state_dict()))

    model = train_segmenter(
        train.images, train.targets, steps=steps, batch_size=batch_size, seed=seed, on_step=validate
    )
    model.load_state_dict(best.pop("state"))
    return model.eval(), best


def _class_head(model: InHouseExtractor) -> torch.nn.Module:
    if model.class_head is None:
        raise ValueError("a classifier needs an extractor built with classes")
    return model.class_head
