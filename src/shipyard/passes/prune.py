"""Prune a torch model: unstructured magnitude pruning, or structured channel removal.

- ``l1_unstructured``: ``torch.nn.utils.prune.l1_unstructured(module, name="weight",
  amount=...)`` on every matching layer, made permanent with ``prune.remove``. Unstructured
  sparsity does not shrink the ONNX file nor the latency on dense runtimes; it only compresses
  better (gzip/zlib).
- ``structured``: whole channels removed with Torch-Pruning's dependency graph (residual
  additions, concatenations, grouped convs stay consistent). The model gets smaller and
  faster, and loses accuracy until it is fine-tuned (``finetune`` pass). The layers producing
  the outputs (the classifier) are kept whole, and the output shapes are checked unchanged.
  The notes count params and MACs before and after; latency is the bench step's to measure.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import time
import zlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from shipyard.artifact import Artifact, PassRecord
from shipyard.data import Dataset
from shipyard.errors import PruneError, ShipyardError
from shipyard.torch_modules import eval_mode, flatten_outputs

if TYPE_CHECKING:
    from shipyard.passes.context import PassContext

UNSTRUCTURED_NOTE = (
    "unstructured sparsity does not shrink the ONNX file nor the latency on dense runtimes; "
    "it only compresses better (gzip/zlib)"
)
# Above this much removed without training data, accuracy collapses (measured on digits: 50%
# of MACs removed took held-out accuracy from ~99% to 43% before fine-tuning, 99.6% after).
_MAX_UNTRAINED = 0.10
_TARGET_STEPS = 100  # target_macs: the channel ratio rises 1% per step until the target is met
_TARGET_MAX_RATIO = 0.9  # never remove more than 90% of a layer's channels
_TAYLOR_SAMPLES = 128  # training samples whose loss gradients rank channels (taylor)
_TAYLOR_BATCH = 32
_ZLIB_LEVEL = 6  # what gzip uses by default


class PruneConfig(BaseModel):
    """``prune: {method: structured, target_macs: 0.5}`` or ``{method: l1_unstructured, ...}``.

    ``amount``: fraction of weights zeroed (unstructured) or of channels removed per layer over
    ``iterative_steps`` (structured). ``target_macs`` (structured): fraction of the MACs to
    keep; the channel ratio rises 1% per step until it is met. ``layers``: torch.nn types for
    l1_unstructured. ``ignore``: module names (as in ``named_modules``) never pruned.
    """

    model_config = ConfigDict(extra="forbid")

    method: Literal["l1_unstructured", "structured"] = Field(
        description="l1_unstructured zeroes single weights (no faster); "
        "structured removes whole channels (fewer MACs, faster)"
    )
    amount: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="Fraction of weights zeroed (l1_unstructured) or of channels removed "
        "per layer (structured)",
    )
    target_macs: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="structured only: fraction of the original MACs to keep, e.g. 0.5",
    )
    layers: list[str] = Field(
        default_factory=lambda: ["Conv2d"],
        min_length=1,
        description="torch.nn layer types l1_unstructured prunes",
    )
    importance: Literal["l1", "l2", "taylor", "lamp"] = Field(
        default="l2",
        description="Channel importance for structured pruning (taylor needs training data)",
    )
    ignore: list[str] = Field(
        default_factory=list, description="Module names (as in named_modules) never pruned"
    )
    iterative_steps: int = Field(
        default=5, ge=1, description="structured: steps the channel ratio is reached in"
    )
    round_to: int | None = Field(
        default=None,
        ge=1,
        description="structured: keep channel counts a multiple of this (e.g. 8 for tensor cores)",
    )
    allow_without_finetune: bool = Field(
        default=False,
        description="Accept structured pruning above 30% without training data "
        "(accuracy drops until fine-tuned)",
    )

    @field_validator("layers")
    @classmethod
    def _known_layers(cls, value: list[str]) -> list[str]:
        known = [n for n, t in vars(nn).items() if isinstance(t, type) and issubclass(t, nn.Module)]
        for name in value:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ValueError(f"'{name}' is not a torch.nn layer type{hint}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PruneConfig:
        if self.method == "l1_unstructured" and (self.amount is None or self.target_macs):
            raise ValueError(
                "l1_unstructured takes `amount` (the fraction of weights to zero), not "
                "target_macs: unstructured sparsity removes no MACs"
            )
        if self.method == "structured" and (self.amount is None) == (self.target_macs is None):
            raise ValueError(
                "structured pruning needs exactly one of `amount` (fraction of channels removed "
                "per layer) or `target_macs` (fraction of the original MACs to keep)"
            )
        return self

    @property
    def removed(self) -> float:
        """The fraction of channels (amount) or MACs (target_macs) structured pruning removes."""
        return self.amount if self.amount is not None else 1 - (self.target_macs or 1)


def _check_ignore(model: nn.Module, names: Sequence[str]) -> None:
    known = [n for n, _ in model.named_modules() if n]
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise PruneError(f"ignore: the model has no module named '{name}'{hint}")


def _compressed_bytes(model: nn.Module) -> tuple[int, int]:
    """Bytes of the safetensors serialization, dense and after zlib."""
    from safetensors.torch import save

    blob = save({k: v.detach().contiguous() for k, v in model.state_dict().items()})
    return len(blob), len(zlib.compress(blob, _ZLIB_LEVEL))


def _prune_unstructured(model: nn.Module, config: PruneConfig) -> dict[str, Any]:
    from torch.nn.utils import prune

    kinds = tuple(getattr(nn, name) for name in config.layers)
    dense_before, zipped_before = _compressed_bytes(model)
    counts: dict[str, list[int]] = {}  # layer kind -> [zeros, weights]
    for name, layer in model.named_modules():
        weight = getattr(layer, "weight", None)
        ignored = any(name == p or name.startswith(p + ".") for p in config.ignore)
        if not isinstance(layer, kinds) or not isinstance(weight, torch.Tensor) or ignored:
            continue
        prune.l1_unstructured(layer, name="weight", amount=config.amount)
        prune.remove(layer, "weight")  # plain tensors again: no weight_orig, no hook
        count = counts.setdefault(type(layer).__name__, [0, 0])
        count[0] += int((layer.weight == 0).sum())
        count[1] += layer.weight.numel()
    if not counts:
        raise PruneError(f"the model has no {' / '.join(config.layers)} layer to prune")
    dense_after, zipped_after = _compressed_bytes(model)
    zeros, total = (sum(c[i] for c in counts.values()) for i in (0, 1))
    all_zeros = sum(int((p == 0).sum()) for p in model.parameters())
    all_total = sum(p.numel() for p in model.parameters())
    return {
        "sparsity": {kind: round(z / n, 4) for kind, (z, n) in counts.items()},
        "sparsity_pruned_layers": round(zeros / total, 4),
        "sparsity_all_parameters": round(all_zeros / max(all_total, 1), 4),
        "dense_bytes_before": dense_before,
        "dense_bytes_after": dense_after,
        "compressed_bytes_before": zipped_before,
        "compressed_bytes_after": zipped_after,
        "compression": f"zlib level {_ZLIB_LEVEL} of the safetensors bytes",
        "note": UNSTRUCTURED_NOTE,
    }


@contextlib.contextmanager
def _diagnosed(model: nn.Module, failure: str, advice: str) -> Iterator[None]:
    """Turn an exception raised while running ``model`` into a PruneError naming the module.

    Forward hooks keep the stack of modules being run: after an exception it still holds
    the innermost module that failed, and ``last`` the last layer that finished.
    """
    stack: list[str] = []
    last = [""]
    handles = []
    for name, module in model.named_modules():
        leaf = not any(True for _ in module.children())

        def enter(_m: nn.Module, _args: Any, n: str = name) -> None:
            stack.append(n)

        def leave(_m: nn.Module, _args: Any, _out: Any, n: str = name, f: bool = leaf) -> None:
            if stack:
                stack.pop()
            if f:
                last[0] = n

        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave))
    try:
        yield
    except ShipyardError:
        raise
    except Exception as error:
        inner = next((n for n in reversed(stack) if n), "")
        where = " while analysing the traced graph" if not stack else " in the model's forward"
        if inner:
            where = f" in '{inner}' ({type(model.get_submodule(inner)).__name__})"
        after = f", right after '{last[0]}' ran" if last[0] else ""
        reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0]}"
        culprit = last[0] or inner or "<layer>"
        raise PruneError(
            f"{failure}{where}{after}: {reason}. {advice.format(culprit=culprit)}"
        ) from error
    finally:
        for handle in handles:
            handle.remove()


def output_layers(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> list[str]:
    """Names of the layers whose outputs are the model's outputs (the final classifier).

    A layer counts when it holds parameters and returns one of the output tensors; when no
    layer does (e.g. ``fc(x) * scale``), the last layer with parameters that ran.
    """
    # The tensors are kept alive: comparing bare ids could match a freed tensor's reused id.
    produced: list[tuple[torch.Tensor, str]] = []
    order: list[str] = []
    handles = []
    for name, module in model.named_modules():
        if name and any(True for _ in module.parameters(recurse=False)):

            def record(_m: nn.Module, _args: Any, out: Any, n: str = name) -> None:
                order.append(n)
                if isinstance(out, torch.Tensor):
                    produced.append((out, n))

            handles.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            outputs = flatten_outputs(model(*example_inputs))
    finally:
        for handle in handles:
            handle.remove()
    found = sorted({n for t in outputs for out, n in produced if out is t})
    return found or order[-1:]


def _importance(kind: str) -> Any:
    import torch_pruning as tp

    if kind == "taylor":
        return tp.importance.GroupTaylorImportance()
    if kind == "lamp":
        return tp.importance.LAMPImportance(p=2)
    return tp.importance.GroupMagnitudeImportance(p=1 if kind == "l1" else 2)


def _taylor_gradients(model: nn.Module, train: Dataset, input_names: Sequence[str]) -> None:
    """Fill ``.grad`` with the cross-entropy gradient over a few training batches.

    Taylor importance ranks a channel by |weight x gradient|; eval mode keeps the
    BatchNorm running statistics untouched while the gradients are computed.
    """
    if train.labels is None:
        raise PruneError("importance: taylor needs labels in the train data (cross-entropy)")
    model.zero_grad(set_to_none=True)
    count = min(len(train), _TAYLOR_SAMPLES)
    labels = torch.as_tensor(train.labels[:count]).long()
    for start in range(0, count, _TAYLOR_BATCH):
        end = min(start + _TAYLOR_BATCH, count)
        args = [torch.as_tensor(train.inputs[name][start:end]) for name in input_names]
        logits = flatten_outputs(model(*args))[0]
        loss = nn.functional.cross_entropy(logits, labels[start:end], reduction="sum") / count
        loss.backward()


def _count(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> tuple[int, int]:
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(model, tuple(example_inputs))
    return int(macs), int(params)


_TRACE_ADVICE = (
    "Add that module to `ignore` if its channels must stay as they are, or prune with "
    "method: l1_unstructured, which needs no graph"
)
_BROKEN_ADVICE = (
    "Torch-Pruning follows the traced graph, but code with a hard-coded channel count (a "
    "view/reshape with constant sizes, channel slicing, split with fixed sizes) breaks. Keep "
    "the layers feeding that code whole with `ignore` (e.g. ignore: ['{culprit}'])"
)


def _prune_structured(
    model: nn.Module,
    config: PruneConfig,
    example_inputs: Sequence[torch.Tensor],
    train: Dataset | None,
    input_names: Sequence[str],
) -> dict[str, Any]:
    import torch_pruning as tp

    if isinstance(model, torch.jit.ScriptModule | torch.fx.GraphModule):
        raise PruneError(
            f"structured pruning needs the model's Python code, not a {type(model).__name__} "
            f"(TorchScript / torch.export archive): load it as 'pkg.module:factory' with its "
            f"weights, or use method: l1_unstructured"
        )
    if config.importance == "taylor" and train is None:
        raise PruneError(
            "importance: taylor needs training data for its gradients (recipe `data: train:`); "
            "use importance: l2 otherwise"
        )
    inputs = tuple(example_inputs)
    with torch.no_grad():
        output_shapes = [t.shape for t in flatten_outputs(model(*inputs))]
    kept = output_layers(model, inputs)
    ignored = [model.get_submodule(name) for name in [*config.ignore, *kept]]
    macs_before, params_before = _count(model, inputs)
    target = None if config.target_macs is None else config.target_macs * macs_before
    with _diagnosed(model, "Torch-Pruning cannot trace the model: it failed", _TRACE_ADVICE):
        pruner = tp.pruner.BasePruner(
            model,
            inputs,
            importance=_importance(config.importance),
            pruning_ratio=config.amount if target is None else 1.0,
            max_pruning_ratio=1.0 if target is None else _TARGET_MAX_RATIO,
            iterative_steps=config.iterative_steps if target is None else _TARGET_STEPS,
            ignored_layers=ignored,
            round_to=config.round_to,
        )
    macs = macs_before
    while pruner.current_step < pruner.iterative_steps and (target is None or macs > target):
        if config.importance == "taylor":
            assert train is not None
            _taylor_gradients(model, train, input_names)
        pruner.step()
        if target is not None:
            macs, _ = _count(model, inputs)
    model.zero_grad(set_to_none=True)
    broken = "after pruning the model no longer runs: it failed"
    with _diagnosed(model, broken, _BROKEN_ADVICE), torch.no_grad():
        shapes = [t.shape for t in flatten_outputs(model(*inputs))]
    if shapes != output_shapes:
        raise PruneError(
            f"pruning changed the output shapes from {[tuple(s) for s in output_shapes]} to "
            f"{[tuple(s) for s in shapes]}: add the layers producing those outputs to `ignore`"
        )
    macs_after, params_after = _count(model, inputs)
    if target is not None and macs_after > target:
        raise PruneError(
            f"could not reach target_macs {config.target_macs}: {macs_after / macs_before:.1%} "
            f"of the MACs remain with at most {_TARGET_MAX_RATIO:.0%} of each layer's channels "
            f"removed (ignored layers: {[*config.ignore, *kept]}); raise target_macs"
        )
    notes: dict[str, Any] = {"kept_whole": kept, "steps": pruner.current_step}
    counts = {"params": (params_before, params_after), "macs": (macs_before, macs_after)}
    for key, (before, after) in counts.items():
        notes.update({f"{key}_before": before, f"{key}_after": after})
        notes[f"{key}_ratio"] = round(after / before, 4)
    return notes


def prune_module(
    module: nn.Module,
    config: PruneConfig,
    example_inputs: Sequence[torch.Tensor],
    train: Dataset | None = None,
    input_names: Sequence[str] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Prune a deep copy of ``module``; return it (eval mode) and the notes describing it.

    ``example_inputs`` (one batch, positional) trace the graph and count MACs; ``train`` (and
    ``input_names``, the order of the model's arguments, default the data set's order) feed
    taylor importance. ``module`` itself is never modified.
    """
    model = eval_mode(copy.deepcopy(module))
    _check_ignore(model, config.ignore)
    if config.method == "l1_unstructured":
        notes = _prune_unstructured(model, config)
    else:
        names = list(input_names or (train.inputs if train is not None else []))
        notes = _prune_structured(model, config, example_inputs, train, names)
    return eval_mode(model), notes


def _refuse_without_training(config: PruneConfig, context: PassContext) -> None:
    if "train" in context.data or config.allow_without_finetune:
        return
    if config.method != "structured" or config.removed <= _MAX_UNTRAINED:
        return
    what = "channels" if config.amount is not None else "MACs"
    raise PruneError(
        f"refusing to remove {config.removed:.0%} of the {what} without training data: "
        f"structured pruning destroys accuracy until the model is fine-tuned (measured on the "
        f"digits example: removing 50% of the MACs took held-out accuracy from ~99% to 43%; 10 "
        f"epochs of fine-tuning brought it back to 99.6%). Add training data to the recipe "
        f"(`data: train: pkg.module:function` or a .npz) and a `finetune` step after `prune`, "
        f"or accept the loss with `allow_without_finetune: true` (CLI: --no-finetune)"
    )


def run_prune(artifact: Artifact, config: PruneConfig, context: PassContext) -> Artifact:
    """The ``prune`` pass: a new torch artifact ``torch-pruned`` with the same signature."""
    if artifact.format != "torch" or artifact.module is None:
        raise PruneError(
            f"prune needs a torch model, got {artifact.describe()}: put prune before export"
        )
    _refuse_without_training(config, context)
    started = time.perf_counter()
    signature = artifact.signature
    feeds = signature.example_inputs(batch=1)
    inputs = [torch.as_tensor(feeds[name]) for name in signature.input_names]
    module, notes = prune_module(
        artifact.module, config, inputs, context.data.get("train"), signature.input_names
    )
    # Latency is measured by the build's bench step (and each optimize candidate's), not here.
    pruned = Artifact("torch-pruned", "torch", signature, module=module)
    record = PassRecord("prune", config.model_dump(), time.perf_counter() - started, notes=notes)
    pruned.provenance = [*artifact.provenance, record]
    context.log.info("prune: %s", {k: v for k, v in notes.items() if "ratio" in k})
    return pruned
