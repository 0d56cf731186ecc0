"""Polygraphy-style comparison: several artifacts, same inputs, errors against the first.

``compare(artifacts, data)`` runs each artifact through its Runtime once and returns one
ValidationReport per candidate (the reference runs once). ``bisect(reference, candidate)``
(ONNX only) marks every intermediate tensor both graphs share as an output, runs both, and
walks the reference graph in order to find the first tensor where they part ways beyond
``atol + rtol * |reference|``: the node to look at.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.artifact import Artifact
from shipyard.data import Dataset
from shipyard.errors import BackendError, InputError
from shipyard.validate import (
    Gates,
    ValidationReport,
    build_report,
    compare_output,
    comparison_data,
    run_all,
)


def compare(
    artifacts: Sequence[Artifact],
    data: Dataset | None = None,
    gates: Gates | None = None,
    *,
    samples: int | None = None,
    batch_size: int = 64,
    threads: int | None = None,
    seed: int = 0,
    task: str = "classification",
) -> list[ValidationReport]:
    """Reports of ``artifacts[1:]`` against ``artifacts[0]`` on the same inputs (``task``: as
    in ``validate``)."""
    if len(artifacts) < 2:
        raise InputError("compare needs at least two artifacts: a reference and a candidate")
    names = [a.name for a in artifacts]
    if len(set(names)) != len(names):
        raise InputError(f"artifact names must differ to tell them apart: {names}")
    gates = gates or Gates()
    reference = artifacts[0]
    random_inputs = data is None
    data = comparison_data(reference, data, samples, batch_size, seed)
    ref_out = run_all(reference, data, batch_size, threads)
    reports = []
    for candidate in artifacts[1:]:
        out = run_all(candidate, data, batch_size, threads)
        report = build_report(
            reference.name, candidate.name, ref_out, out, data.labels, gates, task
        )
        report.random_inputs = random_inputs
        reports.append(report)
    return reports


@dataclass
class TensorDiff:
    """One intermediate tensor compared in both graphs."""

    tensor: str
    node: str
    op_type: str
    max_abs: float
    cosine: float
    violations: int

    @property
    def ok(self) -> bool:
        return self.violations == 0


@dataclass
class BisectResult:
    compared: list[TensorDiff]
    skipped: int  # tensors of the reference that the candidate does not have (renamed/fused)

    @property
    def first_divergence(self) -> TensorDiff | None:
        return next((diff for diff in self.compared if not diff.ok), None)


def _with_all_outputs(model: Any, names: Sequence[str]) -> Any:
    """A copy of ``model`` whose graph outputs include ``names`` (typed by shape inference)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    typed = {v.name: v for v in (*inferred.graph.value_info, *inferred.graph.output)}
    existing = {o.name for o in inferred.graph.output}
    inferred.graph.output.extend(typed[n] for n in names if n in typed and n not in existing)
    return inferred


def _typed_tensors(model: Any) -> list[tuple[str, str, str]]:
    """(tensor, node name, op type) for every node output with a known type, in graph order."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    typed = {v.name for v in (*inferred.graph.value_info, *inferred.graph.output)}
    return [
        (out, node.name or f"#{i}", node.op_type)
        for i, node in enumerate(model.graph.node)
        for out in node.output
        if out in typed
    ]


def _run_marked(
    model: Any, names: list[str], feeds: dict[str, np.ndarray], path: Path, artifact: Artifact
) -> dict[str, np.ndarray]:
    """Run ``artifact``'s ``model`` with the tensors ``names`` marked as outputs (saved to
    ``path``); BackendError, naming the artifact, when ONNX Runtime cannot run it."""
    import onnx
    import onnxruntime as ort

    onnx.save(_with_all_outputs(model, names), str(path))
    options = ort.SessionOptions()
    # No fusion: a fused tensor would vanish, and we want every marked tensor as computed.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        outputs = [o.name for o in session.get_outputs()]
        return dict(zip(outputs, session.run(outputs, feeds), strict=True))
    except Exception as error:  # ORT raises its own Fail/InvalidArgument types
        raise BackendError(
            f"--bisect: ONNX Runtime cannot run {artifact.describe()} on the reference's inputs "
            f"({', '.join(feeds)}): {str(error).strip()}; bisect compares two graphs that take "
            f"the same inputs"
        ) from error


def bisect(
    reference: Artifact,
    candidate: Artifact,
    feeds: dict[str, np.ndarray] | None = None,
    *,
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> BisectResult:
    """Compare every intermediate tensor the two ONNX graphs share, in the reference's order."""
    import onnx

    for artifact in (reference, candidate):
        if artifact.format != "onnx":
            raise InputError(f"--bisect compares ONNX graphs; {artifact.describe()} is not ONNX")
    gates = Gates().merged(atol=atol, rtol=rtol)  # InputError for a negative tolerance
    feeds = feeds or reference.signature.example_inputs(batch=2)
    reference.signature.check_inputs(feeds)
    ref_model = onnx.load(str(reference.path))
    cand_model = onnx.load(str(candidate.path))
    ref_tensors = _typed_tensors(ref_model)
    cand_names = {name for name, _, _ in _typed_tensors(cand_model)}
    shared = [t for t in ref_tensors if t[0] in cand_names]
    names = [name for name, _, _ in shared]
    with tempfile.TemporaryDirectory() as folder:
        ref_out = _run_marked(ref_model, names, feeds, Path(folder) / "ref.onnx", reference)
        cand_out = _run_marked(cand_model, names, feeds, Path(folder) / "cand.onnx", candidate)
    compared = []
    for name, node, op_type in shared:
        if name not in ref_out or name not in cand_out:
            continue
        a, b = ref_out[name], cand_out[name]
        if a.shape != b.shape or a.dtype.kind not in "fc" or b.dtype.kind not in "fc":
            continue  # integer or reshaped tensors (e.g. quantized values) are not comparable
        stats = compare_output(name, a, b, gates)
        compared.append(
            TensorDiff(name, node, op_type, stats.max_abs, stats.cosine, stats.violations or 0)
        )
    return BisectResult(compared, skipped=len(ref_tensors) - len(shared))
