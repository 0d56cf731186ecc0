"""A DLRM-style click model for MovieLens-100k, trained once and cached as safetensors.

``build_model()`` gives an untrained model; ``trained()`` trains one on ``data.train()`` (a few
seconds on one CPU thread) or loads it from the cache, keyed by its hyper-parameters and
``ARCH_VERSION``. The model takes the five inputs of ``data`` (four int64 id tensors ``[N]``
and float32 ``dense [N, 21]``) and returns float32 ``probability [N]``: the chance that the
user rates the item 4 or 5.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from sklearn.metrics import roc_auc_score
from torch import nn

from shipyard.examples.digits.model import cache_dir
from shipyard.examples.recsys import data
from shipyard.progress import progress_bar

logger = logging.getLogger("shipyard.examples.recsys")

#: Part of every checkpoint's name: bump it whenever DLRM's layers change.
ARCH_VERSION = 1

DEFAULT_EPOCHS = 2
DEFAULT_SEED = 0
DEFAULT_LR = 2e-3
DEFAULT_BATCH_SIZE = 256
# Decoupled weight decay (AdamW) also shrinks the embedding rows no training rating touches
# (85% of the held-out ratings are by users first seen after the cut), so they score near
# zero instead of adding their random initialisation to every dot product.
WEIGHT_DECAY = 1e-2

#: (name, rows) of each embedding table, in the model's input order.
TABLES = (
    ("user", data.USERS),
    ("item", data.ITEMS),
    ("gender", 2),
    ("occupation", len(data.OCCUPATIONS)),
)


def _mlp(*widths: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for inner, outer in itertools.pairwise(widths):
        layers += [nn.Linear(inner, outer), nn.ReLU()]
    return nn.Sequential(*layers)


class DLRM(nn.Module):
    """Naumov et al.'s DLRM at MovieLens scale.

    Each id goes through its own embedding table (``dim`` wide); the dense features through
    the bottom MLP (``dense -> 128 -> dim``). The interaction is every pairwise dot product
    of those five vectors (10 values), concatenated with the bottom MLP's output; the top
    MLP (``10 + dim -> 256 -> 128 -> 1``) and a sigmoid give the probability. Ids are looked
    up as given: the signature's ranges keep them inside the tables.
    """

    def __init__(self, dim: int = 32, dense: int = data.DENSE) -> None:
        super().__init__()
        tables = {name: nn.Embedding(rows, dim) for name, rows in TABLES}
        for table in tables.values():
            nn.init.normal_(table.weight, std=0.01)  # small: an untrained row stays near 0
        self.tables = nn.ModuleDict(tables)
        self.bottom = _mlp(dense, 128, dim)
        vectors = len(TABLES) + 1
        upper = torch.triu_indices(vectors, vectors, offset=1)
        self.pairs: torch.Tensor  # flat indices of the upper triangle of the 5x5 products
        self.register_buffer("pairs", upper[0] * vectors + upper[1], persistent=False)
        self.top = nn.Sequential(*_mlp(upper.shape[1] + dim, 256, 128), nn.Linear(128, 1))

    def forward(
        self,
        user: torch.Tensor,
        item: torch.Tensor,
        gender: torch.Tensor,
        occupation: torch.Tensor,
        dense: torch.Tensor,
    ) -> torch.Tensor:
        """Probabilities ``[N]`` for ids ``[N]`` (int64) and dense features ``[N, 21]``."""
        bottom = self.bottom(dense)
        ids = (user, item, gender, occupation)
        vectors = [self.tables[name](x) for (name, _), x in zip(TABLES, ids, strict=True)]
        stacked = torch.stack([*vectors, bottom], dim=1)  # [N, 5, dim]
        products = torch.bmm(stacked, stacked.transpose(1, 2)).flatten(1)  # [N, 25]
        features = torch.cat([products[:, self.pairs], bottom], dim=1)
        return torch.sigmoid(self.top(features)).squeeze(1)


def build_model() -> DLRM:
    """A freshly initialised (untrained) DLRM in eval mode; seeds nothing."""
    return DLRM().eval()


def checkpoint_path(
    *,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = DEFAULT_SEED,
    lr: float = DEFAULT_LR,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Path:
    """The cache file for these hyper-parameters: ``<cache_dir>/recsys-dlrm-<hash>.safetensors``
    (the same cache folder as the digits CNN: ``SHIPYARD_CACHE_DIR`` and so on). The hash covers
    them, the weight decay and ``ARCH_VERSION``."""
    key = {
        "arch": ARCH_VERSION,
        "epochs": int(epochs),
        "seed": int(seed),
        "lr": float(lr),
        "batch_size": int(batch_size),
        "weight_decay": WEIGHT_DECAY,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / f"recsys-dlrm-{digest}.safetensors"


def predict(model: nn.Module, inputs: dict[str, np.ndarray], batch: int = 4096) -> np.ndarray:
    """Probabilities for ``inputs`` (as ``data`` returns them), in eval mode, no gradients."""
    names = [name for name, _ in TABLES] + ["dense"]
    out = []
    with torch.no_grad():
        for start in range(0, len(inputs["user"]), batch):
            args = [torch.from_numpy(inputs[n][start : start + batch]) for n in names]
            out.append(model(*args).numpy())
    return np.concatenate(out)


def auc(model: nn.Module, inputs: dict[str, np.ndarray], labels: np.ndarray) -> float:
    """ROC AUC of ``model`` on ``inputs`` and 0/1 ``labels``; the model's mode is restored."""
    was_training = model.training
    model.eval()
    try:
        return float(roc_auc_score(labels, predict(model, inputs)))
    finally:
        model.train(was_training)


def _fit(model: DLRM, epochs: int, seed: int, lr: float, batch_size: int) -> None:
    """Train ``model`` in place on ``data.train()`` with binary cross-entropy."""
    inputs, labels = data.train()
    names = [name for name, _ in TABLES] + ["dense"]
    tensors = [torch.from_numpy(inputs[n]) for n in names]
    target = torch.from_numpy(labels).float()
    generator = torch.Generator().manual_seed(seed)
    steps = epochs * -(-len(target) // batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    loss_fn = nn.BCELoss()
    model.train()
    with progress_bar() as progress:
        task = progress.add_task("recsys: training", total=epochs)
        for epoch in range(epochs):
            order = torch.randperm(len(target), generator=generator)
            total = 0.0
            for start in range(0, len(target), batch_size):
                index = order[start : start + batch_size]
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(*(t[index] for t in tensors)), target[index])
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.item() * len(index)
            progress.update(
                task,
                advance=1,
                description=f"recsys: epoch {epoch + 1}/{epochs} loss {total / len(target):.4f}",
            )
    model.eval()


def _save_atomic(model: nn.Module, path: Path) -> None:
    """The state_dict via a temporary file + ``os.replace``: never a truncated checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp_name, 0o644)
        state = {name: t.detach().contiguous() for name, t in model.state_dict().items()}
        save_file(state, tmp_name, metadata={"arch_version": str(ARCH_VERSION)})
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


def _load(path: Path) -> DLRM | None:
    """The cached model at ``path``, or None if it is missing or unreadable (then retrain)."""
    if not path.is_file():
        return None
    with torch.random.fork_rng(devices=[]):
        model = DLRM()
    try:
        model.load_state_dict(load_file(path), strict=True)  # safetensors: never unpickle
    except Exception as error:  # a truncated or foreign file: retrain and overwrite it
        logger.warning("ignoring unreadable recsys checkpoint %s: %s", path, error)
        return None
    return model.eval()


def trained(
    epochs: int = DEFAULT_EPOCHS,
    seed: int = DEFAULT_SEED,
    lr: float = DEFAULT_LR,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> DLRM:
    """A trained DLRM in eval mode (held-out AUC about 0.73 with the defaults).

    Loads ``checkpoint_path(...)`` if it exists; otherwise trains on one thread (the same
    hyper-parameters give bit-identical weights), writes the checkpoint atomically and logs
    the held-out AUC. The caller's global torch RNG state and thread count are left untouched.
    """
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(
            f"trained(): need epochs>=1, batch_size>=1, lr>0; got {epochs=}, {batch_size=}, {lr=}"
        )
    path = checkpoint_path(epochs=epochs, seed=seed, lr=lr, batch_size=batch_size)
    cached = _load(path)
    if cached is not None:
        return cached
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DLRM()
        try:
            _fit(model, epochs=epochs, seed=seed, lr=lr, batch_size=batch_size)
        finally:
            torch.set_num_threads(threads)
    seconds = time.perf_counter() - started
    held_out = auc(model, *data.validation())
    _save_atomic(model, path)
    logger.info(
        "recsys DLRM trained: held-out AUC %.4f, %.1f s training, saved to %s",
        held_out,
        seconds,
        path,
    )
    return model
