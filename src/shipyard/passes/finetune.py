"""Fine-tune a torch classifier on the recipe's training data, e.g. after structured pruning.

Cross-entropy on the first output against the integer labels of ``data: train:``, optionally
distilled from the original (unpruned) model: ``loss = alpha * KD + (1 - alpha) * CE`` with
``KD = KL(softmax(teacher / T) || softmax(student / T)) * T^2``. The learning rate follows a
cosine from ``lr`` down to 0 over the run, so the last epoch changes the weights least.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from torch import nn
from torch.nn import functional as F

from shipyard.artifact import Artifact, PassRecord
from shipyard.data import Dataset
from shipyard.errors import FinetuneError
from shipyard.progress import progress_bar
from shipyard.torch_modules import eval_mode, flatten_outputs

if TYPE_CHECKING:
    from shipyard.passes.context import PassContext

_EVAL_BATCH = 256


class FinetuneConfig(BaseModel):
    """``finetune: {epochs: 10, lr: 0.001, distill_from_original: true}``.

    ``optimizer`` sgd uses momentum 0.9. ``distill_from_original`` learns from the recipe's
    original model too (``temperature`` softens both distributions; ``alpha`` weighs the
    distillation term against cross-entropy). ``seed`` fixes shuffling and dropout.
    """

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(default=10, ge=1, description="Passes over the training data")
    lr: float = Field(default=1e-3, gt=0, description="Learning rate")
    optimizer: Literal["adam", "adamw", "sgd"] = Field(
        default="adamw", description="Optimizer (sgd uses momentum 0.9)"
    )
    batch_size: int = Field(default=64, ge=1, description="Training batch size")
    weight_decay: float = Field(default=0.0, ge=0, description="Weight decay")
    distill_from_original: bool = Field(
        default=False,
        description="Also learn from the original model's outputs (knowledge distillation)",
    )
    temperature: float = Field(
        default=4.0, gt=0, description="Distillation temperature: softens both distributions"
    )
    alpha: float = Field(
        default=0.5, ge=0, le=1, description="Weight of the distillation term against cross-entropy"
    )
    seed: int = Field(default=0, description="Seed for shuffling and dropout")


def _optimizer(config: FinetuneConfig, parameters: Any) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            parameters, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay
        )
    kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return kind(parameters, lr=config.lr, weight_decay=config.weight_decay)


def _arrays(data: Dataset, names: Sequence[str], role: str) -> list[torch.Tensor]:
    missing = [name for name in names if name not in data.inputs]
    if missing:
        raise FinetuneError(
            f"data '{role}' has no array for input(s) {missing}; it holds {list(data.inputs)}"
        )
    return [torch.as_tensor(np.asarray(data.inputs[name])) for name in names]


def _labels(data: Dataset, role: str) -> torch.Tensor:
    if data.labels is None:
        raise FinetuneError(
            f"data '{role}' has no labels: finetune trains a classifier with cross-entropy, "
            f"so `data: {role}:` must give (inputs, labels)"
        )
    labels = np.asarray(data.labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise FinetuneError(
            f"data '{role}' labels are {labels.dtype}; finetune needs integer class ids"
        )
    return torch.as_tensor(labels).long()


def accuracy(
    model: nn.Module, data: Dataset, input_names: Sequence[str], role: str = "validation"
) -> float:
    """Top-1 accuracy (0 to 1) of the first output on ``data``; the model's mode is restored."""
    inputs, labels = _arrays(data, input_names, role), _labels(data, role)
    correct = 0
    with _evaluating(model), torch.no_grad():
        for start in range(0, len(labels), _EVAL_BATCH):
            logits = flatten_outputs(model(*[x[start : start + _EVAL_BATCH] for x in inputs]))[0]
            correct += int((logits.argmax(dim=1) == labels[start : start + _EVAL_BATCH]).sum())
    return correct / len(labels)


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for a while, then the mode the caller had (a teacher must stay untouched)."""
    was_training = model.training
    eval_mode(model)
    try:
        yield model
    finally:
        model.train(was_training)


def _loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    config: FinetuneConfig,
) -> torch.Tensor:
    ce = F.cross_entropy(logits, labels)
    if teacher_logits is None:
        return ce
    t = config.temperature
    # KL(teacher || student) on temperature-softened distributions; T^2 keeps the gradient
    # scale independent of T (Hinton et al.).
    kd = F.kl_div(
        F.log_softmax(logits / t, dim=1),
        F.log_softmax(teacher_logits / t, dim=1),
        log_target=True,
        reduction="batchmean",
    ) * (t * t)
    return config.alpha * kd + (1 - config.alpha) * ce


def finetune_module(
    module: nn.Module,
    config: FinetuneConfig,
    train: Dataset,
    input_names: Sequence[str],
    validation: Dataset | None = None,
    teacher: nn.Module | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train a deep copy of ``module``; return it in eval mode and notes per epoch.

    ``teacher`` (used when ``config.distill_from_original``) only runs, in eval mode and
    without gradients; neither it nor ``module`` is modified. Held-out accuracy is measured
    on ``validation`` after every epoch when it has labels.
    """
    if config.distill_from_original and teacher is None:
        raise FinetuneError("distill_from_original needs the original torch model as teacher")
    model = copy.deepcopy(module)
    inputs, labels = _arrays(train, input_names, "train"), _labels(train, "train")
    held_out = validation if validation is not None and validation.labels is not None else None
    started = time.perf_counter()
    notes: dict[str, Any] = {"samples": len(labels), "distilled": config.distill_from_original}
    if held_out is not None:
        notes["held_out_accuracy_before"] = round(accuracy(model, held_out, input_names), 4)
    generator = torch.Generator().manual_seed(config.seed)
    steps = config.epochs * -(-len(labels) // config.batch_size)
    optimizer = _optimizer(config, model.parameters())
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    epochs: list[dict[str, float]] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    # fork_rng: seeding dropout here must not reset the caller's random stream.
    with (
        torch.random.fork_rng(devices=[]),
        progress_bar(*columns, TimeElapsedColumn()) as progress,
    ):
        torch.manual_seed(config.seed)
        task = progress.add_task("finetune", total=config.epochs)
        for epoch in range(1, config.epochs + 1):
            order = torch.randperm(len(labels), generator=generator)
            model.train()
            total, seen = 0.0, 0
            for start in range(0, len(order), config.batch_size):
                index = order[start : start + config.batch_size]
                if len(index) < 2 < len(order):
                    continue  # BatchNorm cannot train on a lone sample
                batch = [x[index] for x in inputs]
                target = None
                if teacher is not None and config.distill_from_original:
                    with _evaluating(teacher), torch.no_grad():
                        target = flatten_outputs(teacher(*batch))[0]
                loss = _loss(flatten_outputs(model(*batch))[0], labels[index], target, config)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total, seen = total + loss.item() * len(index), seen + len(index)
            record = {"epoch": epoch, "loss": round(total / max(seen, 1), 5)}
            text = f"finetune: epoch {epoch}/{config.epochs} loss {record['loss']:.4f}"
            if held_out is not None:
                record["held_out_accuracy"] = round(accuracy(model, held_out, input_names), 4)
                text += f" held-out {record['held_out_accuracy']:.2%}"
            epochs.append(record)
            progress.update(task, advance=1, description=text)
    notes["epochs"] = epochs
    if held_out is not None:
        notes["held_out_accuracy_after"] = epochs[-1]["held_out_accuracy"]
    notes["seconds"] = round(time.perf_counter() - started, 3)
    return eval_mode(model), notes


def run_finetune(artifact: Artifact, config: FinetuneConfig, context: PassContext) -> Artifact:
    """The ``finetune`` pass: a new torch artifact ``torch-finetuned``, in eval mode."""
    if artifact.format != "torch" or artifact.module is None:
        raise FinetuneError(
            f"finetune needs a torch model, got {artifact.describe()}: put finetune before export"
        )
    train = context.data.get("train")
    if train is None:
        raise FinetuneError(
            "finetune needs training data: add `data: train:` to the recipe (a "
            "'pkg.module:function' returning (x, y), or a .npz with the inputs and `labels`)"
        )
    teacher = None
    if config.distill_from_original:
        teacher = context.reference.module
        if context.reference.format != "torch" or teacher is None:
            raise FinetuneError(
                f"distill_from_original needs the original model in torch, got "
                f"{context.reference.describe()}; set distill_from_original: false"
            )
    started = time.perf_counter()
    names = artifact.signature.input_names
    module, notes = finetune_module(
        artifact.module, config, train, names, context.data.get("validation"), teacher
    )
    record = PassRecord("finetune", config.model_dump(), time.perf_counter() - started, notes)
    context.log.info(
        "finetune: %d epochs, loss %.4f, held-out accuracy %s",
        config.epochs,
        notes["epochs"][-1]["loss"],
        notes.get("held_out_accuracy_after", "n/a"),
    )
    return Artifact(
        "torch-finetuned",
        "torch",
        artifact.signature,
        module=module,
        provenance=[*artifact.provenance, record],
    )
