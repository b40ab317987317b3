"""Downstream models, trained with the evaluation's code so the benchmark has no second trainer.

Classifier: the evaluation extractor's MONAI ResNet (`InHouseExtractor`, class head only) trained by
the shared `train_loop` (random left-right flips, translation and intensity augmentation, AdamW,
one-cycle schedule, bf16 autocast). Plain cross-entropy, except for the class-weighted control
(inverse-frequency class weights); each image may carry a loss weight (synthetic images' weight).
A DenseNet121 would be the textbook choice but is far too slow on a CPU. Every `eval_every` steps the
macro-F1 on the real validation split is measured and the best weights are kept (early stopping within a
fixed step budget, so arms get the same compute).

Segmenter: the condition-fidelity `train_segmenter` (MONAI UNet, left-right flips), with the same early
stopping on the mean Dice of the real validation split; it can start from given weights (fine-tuning after
synthetic pre-training) and draw images into batches in proportion to a weight.
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
    *,
    class_weighted: bool = False,
    sample_weights: torch.Tensor | None = None,
) -> tuple[InHouseExtractor, dict[str, Any]]:
    """Train (or fine-tune ``model``) and return the weights with the best validation macro-F1.

    ``class_weighted``: inverse-frequency class weights in the loss; ``sample_weights`` (N,): each image's
    loss weight (default 1). The loss is the weighted mean over the batch."""
    if model is None:
        torch.manual_seed(settings.seed)  # weight initialisation
        model = InHouseExtractor(num_classes, settings.widths, in_channels=train.images.shape[1])
    cw = class_weights(train.labels, num_classes) if class_weighted else torch.ones(num_classes)
    sw = torch.ones(len(train)) if sample_weights is None else sample_weights.float()
    # train_loop indexes the label tensor by batch: carry each image's index beside its label.
    labels_and_index = torch.stack([train.labels, torch.arange(len(train))], 1)
    best: dict[str, Any] = {"val_macro_f1": -1.0, "step": None, "state": None}

    head = _class_head(model)

    def batch_loss(x: torch.Tensor, y: torch.Tensor | None, _: torch.Generator) -> torch.Tensor:
        assert y is not None  # a classifier trains on labelled images
        label, index = y[:, 0], y[:, 1]
        w = cw[label] * sw[index]
        loss = F.cross_entropy(head(model.backbone(x)).float(), label, reduction="none")
        return (loss * w).sum() / w.sum()

    def validate(step: int) -> None:
        if (step + 1) % eval_every and step != settings.steps - 1:
            return
        pred = class_probabilities(model, val.images).argmax(1)
        score = f1_score(val.labels, pred, average="macro", labels=range(num_classes), zero_division=0)
        if score > best["val_macro_f1"]:
            best.update(val_macro_f1=float(score), step=step + 1, state=copy.deepcopy(model.state_dict()))

    history = train_loop(model, train.images, labels_and_index, settings, batch_loss, validate)
    model.load_state_dict(best.pop("state"))
    return model.eval(), best | {"history": history}


def train_segmentation(
    train: Labelled,
    val: Labelled,
    steps: int,
    batch_size: int,
    seed: int,
    eval_every: int,
    model: nn.Module | None = None,
    sample_weights: torch.Tensor | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train (or fine-tune ``model``) a segmenter and return the weights with the best mean validation
    Dice; ``sample_weights``: each pair's rate of being drawn into a batch."""
    best: dict[str, Any] = {"val_dice": -1.0, "step": None, "state": None}

    def validate(step: int, model: nn.Module) -> None:
        if (step + 1) % eval_every and step != steps - 1:
            return
        dice, _, _ = per_image_scores(segment(model, val.images), val.targets)
        if dice.mean() > best["val_dice"]:
            best.update(val_dice=float(dice.mean()), step=step + 1, state=copy.deepcopy(model.state_dict()))

    model = train_segmenter(
        train.images,
        train.targets,
        steps=steps,
        batch_size=batch_size,
        seed=seed,
        on_step=validate,
        model=model,
        sample_weights=sample_weights,
    )
    model.load_state_dict(best.pop("state"))
    return model.eval(), best


def _class_head(model: InHouseExtractor) -> torch.nn.Module:
    if model.class_head is None:
        raise ValueError("a classifier needs an extractor built with classes")
    return model.class_head
