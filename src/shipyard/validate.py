"""Does the candidate still answer like the reference? Parity statistics, accuracy, gates.

``validate(reference, candidate, data)`` runs both artifacts through their Runtimes on the
same inputs and reports, per output: max/mean absolute error, max relative error, cosine
similarity, NaN/Inf counts, and for classifier outputs the agreement of the two: top-1, top-5
(the reference's top-1 among the candidate's five best) and top-1 on the samples where the
reference is confident; for outputs of rows (``[N, ...]`` floats) the cosine of each sample,
its minimum and mean; with labels, the accuracy of both and the drop (``task: binary``: AUC
and log-loss, see ``binary_metrics``; ``task: detection``: frame-level precision, recall and
F1, see ``detection_metrics``; ``task: embedding``: the semantic ranking check, see
``embedding_metrics``). Gates turn those numbers into pass/fail.

A stateful model (``sequence``: the recipe's ``serve: sequence:``) is validated as it is
served: the data's rows are chunks, each sequence's in order with its state carried
(:func:`shipyard.stateful.run_sequences`), and only the outputs a client gets are compared.

``run_alone(artifact, data)`` is for a model that is its own reference (a model file packaged
as it is): it runs once, with nothing to compare, and reports its outputs and accuracy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from shipyard.artifact import Artifact
from shipyard.binary_metrics import binary_scores
from shipyard.data import Dataset
from shipyard.detection_metrics import detection_scores
from shipyard.embedding_metrics import ranking, sample_cosines
from shipyard.errors import ComparisonError, DataError, InputError
from shipyard.gates import GateResult, Gates, gate_results
from shipyard.processing.labels import softmax
from shipyard.runtimes import open_session
from shipyard.stateful import SequenceConfig, Stepper, run_sequences

# Relative error divides by |reference|; this floor keeps exact zeros from dividing by 0.
_REL_FLOOR = 1e-6
#: The reference is confident about a sample when its softmax top-1 probability reaches this.
#: Below it the two best classes often nearly tie (textures, out-of-domain photos), and an int8
#: model flipping such a tie says little; a flip where the reference is sure is a real error.
CONFIDENT = 0.5
_TOP_K = 5


@dataclass
class OutputComparison:
    name: str
    shape: list[int]
    max_abs: float
    mean_abs: float
    max_rel: float
    cosine: float
    top1_agreement: float | None
    nonfinite_reference: int
    nonfinite_candidate: int
    violations: int | None = None  # elements outside atol/rtol, when those gates are set
    # Classifier outputs: the reference's top-1 among the candidate's 5 best classes; top-1
    # agreement where the reference is confident (CONFIDENT) and on how many samples.
    top5_agreement: float | None = None
    confident_top1_agreement: float | None = None
    confident_samples: int | None = None
    # Outputs of rows ([N, ...] floats): the cosine of each sample with the reference's row.
    sample_cosine_min: float | None = None
    sample_cosine_mean: float | None = None


@dataclass
class OutputRun:
    """One output of an artifact run alone: its shape and how many values are NaN/Inf."""

    name: str
    shape: list[int]
    nonfinite: int


@dataclass
class ValidationReport:
    reference: str
    candidate: str
    samples: int
    outputs: list[OutputComparison]
    accuracy_reference: float | None = None
    accuracy_candidate: float | None = None
    gates: list[GateResult] = field(default_factory=list)
    # True when no data was given and the inputs were seeded random arrays from the signature:
    # parity on them says little about real inputs (an int8 model can look far worse or better)
    random_inputs: bool = False
    # False: ``candidate`` is the reference itself (a model file packaged as it is), so there
    # was nothing to compare: ``outputs`` is empty, ``ran`` holds what it returned, and
    # ``accuracy_candidate`` is its accuracy (see ``run_alone``).
    parity: bool = True
    ran: list[OutputRun] = field(default_factory=list)
    # task: binary, with labels: ROC AUC and log-loss of the first output (binary_metrics)
    auc_reference: float | None = None
    auc_candidate: float | None = None
    log_loss_reference: float | None = None
    log_loss_candidate: float | None = None
    # task: detection, with frame labels: precision, recall and F1 (detection_metrics)
    precision_reference: float | None = None
    precision_candidate: float | None = None
    recall_reference: float | None = None
    recall_candidate: float | None = None
    f1_reference: float | None = None
    f1_candidate: float | None = None
    # task: embedding, with labels as groups of similar samples (embedding_metrics.ranking):
    # the share of (anchor, similar, unrelated) triplets ordered as the reference orders them,
    # and the share each model orders as the labels say.
    ranking_triplets: int | None = None
    ranking_agreement: float | None = None
    ranking_reference: float | None = None
    ranking_candidate: float | None = None

    @property
    def accuracy_drop(self) -> float | None:
        if self.accuracy_reference is None or self.accuracy_candidate is None:
            return None
        return self.accuracy_reference - self.accuracy_candidate

    @property
    def auc_drop(self) -> float | None:
        if self.auc_reference is None or self.auc_candidate is None:
            return None
        return self.auc_reference - self.auc_candidate

    @property
    def f1_drop(self) -> float | None:
        if self.f1_reference is None or self.f1_candidate is None:
            return None
        return self.f1_reference - self.f1_candidate

    @property
    def passed(self) -> bool:
        return all(gate.passed for gate in self.gates)

    def failures(self) -> list[GateResult]:
        return [gate for gate in self.gates if not gate.passed]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(accuracy_drop=self.accuracy_drop, auc_drop=self.auc_drop, passed=self.passed)
        data["f1_drop"] = self.f1_drop
        return data


def _is_classifier_output(array: np.ndarray) -> bool:
    return array.ndim == 2 and array.shape[1] > 1 and array.dtype.kind == "f"


def compare_output(
    name: str,
    ref: np.ndarray,
    cand: np.ndarray,
    gates: Gates,
    *,
    reference: str = "the reference",
    candidate: str = "the candidate",
    classes: bool = True,
) -> OutputComparison:
    """Statistics of one output pair; non-finite elements are counted, not averaged.
    ``classes``: a ``[N, classes]`` float output may be a classifier's (top-1 agreement...);
    false for embeddings, whose largest element means nothing.

    ``reference``/``candidate`` name the two sides in the error raised when the shapes differ
    (ComparisonError: the candidate does not compute this output).
    """
    if ref.shape != cand.shape:
        raise ComparisonError(
            f"output '{name}': {reference} gives shape {list(ref.shape)} but {candidate} gives "
            f"{list(cand.shape)}; outputs are matched by position, so both must return the same "
            f"outputs in the same order: compare artifacts made from the same model"
        )
    r = ref.astype(np.float64)
    c = cand.astype(np.float64)
    finite = np.isfinite(r) & np.isfinite(c)
    diff = np.abs(c - r)[finite]
    rel = diff / np.maximum(np.abs(r[finite]), _REL_FLOOR)
    rf, cf = r[finite], c[finite]
    denominator = np.linalg.norm(rf) * np.linalg.norm(cf)
    cosine = float(rf @ cf / denominator) if denominator > 0 else float(np.array_equal(rf, cf))
    top1 = None
    agreement: dict[str, Any] = {}
    if classes and _is_classifier_output(ref):
        top1 = float(np.mean(ref.argmax(axis=1) == cand.argmax(axis=1)))
        agreement = _agreement(ref, cand)
    per_sample: dict[str, Any] = {}
    if ref.ndim >= 2 and ref.dtype.kind == "f" and len(ref):
        cosines = sample_cosines(np.where(finite, r, 0.0), np.where(finite, c, 0.0))
        per_sample = {
            "sample_cosine_min": float(cosines.min()),
            "sample_cosine_mean": float(cosines.mean()),
        }
    violations = None
    if gates.atol is not None or gates.rtol is not None:
        limit = (gates.atol or 0.0) + (gates.rtol or 0.0) * np.abs(r[finite])
        violations = int(np.count_nonzero(diff > limit))
    return OutputComparison(
        name=name,
        shape=list(ref.shape),
        max_abs=float(diff.max()) if diff.size else 0.0,
        mean_abs=float(diff.mean()) if diff.size else 0.0,
        max_rel=float(rel.max()) if rel.size else 0.0,
        cosine=cosine,
        top1_agreement=top1,
        nonfinite_reference=int(np.count_nonzero(~np.isfinite(r))),
        nonfinite_candidate=int(np.count_nonzero(~np.isfinite(c))),
        violations=violations,
        **agreement,
        **per_sample,
    )


def _agreement(ref: np.ndarray, cand: np.ndarray) -> dict[str, Any]:
    """Top-5 agreement and top-1 agreement where the reference is confident."""
    ref_top1 = ref.argmax(axis=1)
    k = min(_TOP_K, ref.shape[1])
    cand_top = np.argpartition(-cand, k - 1, axis=1)[:, :k]
    top5 = float(np.mean(np.any(cand_top == ref_top1[:, None], axis=1)))
    confident = softmax(ref).max(axis=1) >= CONFIDENT
    count = int(np.count_nonzero(confident))
    agree = ref_top1[confident] == cand[confident].argmax(axis=1)
    return {
        "top5_agreement": top5,
        "confident_top1_agreement": float(np.mean(agree)) if count else None,
        "confident_samples": count,
    }


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(logits.argmax(axis=-1) == labels.reshape(-1)))


def run_all(
    artifact: Artifact,
    data: Dataset,
    batch_size: int,
    threads: int | None,
    sequence: SequenceConfig | None = None,
) -> dict[str, np.ndarray]:
    """Run every batch of ``data`` through the artifact; concatenate outputs by name.

    ``data`` is channels-first (PyTorch's layout); inputs and outputs the artifact's signature
    declares NHWC are transposed on the way in and back on the way out. With ``sequence``
    the rows are steps of sequences (``data.sequences``), run in order with their state.
    """
    signature = artifact.signature
    if sequence is not None:
        stepper = Stepper(signature, sequence)
        with open_session(artifact, threads=threads) as session:
            return run_sequences(session, data.inputs, data.sequences, stepper, batch_size)
    chunks: dict[str, list[np.ndarray]] = {}
    inputs = {spec.name: spec for spec in signature.inputs}
    outputs = {spec.name: spec for spec in signature.outputs}
    with open_session(artifact, threads=threads) as session:
        for feeds in data.batches(batch_size):
            feeds = {
                n: inputs[n].from_channels_first(v) if n in inputs else v for n, v in feeds.items()
            }
            for name, value in session.run(feeds).items():
                value = outputs[name].to_channels_first(value) if name in outputs else value
                chunks.setdefault(name, []).append(value)
    return {name: np.concatenate(parts) for name, parts in chunks.items()}


def comparison_data(
    reference: Artifact,
    data: Dataset | None,
    samples: int | None,
    batch_size: int,
    seed: int,
    sequence: SequenceConfig | None = None,
) -> Dataset:
    """The first ``samples`` of ``data``, or ``samples`` (default 64) seeded random inputs
    for ``reference``'s signature (with ``sequence``: its clients', one sequence). Raises
    InputError for a ``samples`` or ``batch_size`` below 1 and DataError for a data set
    without samples: no comparison could run on them.
    """
    if samples is not None and samples < 1:
        raise InputError(f"samples must be at least 1, got {samples}")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    if data is None:
        signature = reference.signature
        if sequence is not None:
            signature = Stepper(signature, sequence).client
        return Dataset(signature.example_inputs(batch=samples or 64, seed=seed))
    if not data.inputs or len(data) == 0:
        raise DataError("the data to compare on holds no samples; give at least one")
    return data.take(samples)


def validate(
    reference: Artifact,
    candidate: Artifact,
    data: Dataset | None = None,
    gates: Gates | None = None,
    *,
    samples: int | None = None,
    batch_size: int = 64,
    threads: int | None = None,
    task: str = "classification",
    seed: int = 0,
    reference_cache: dict[str, np.ndarray] | None = None,
    sequence: SequenceConfig | None = None,
) -> ValidationReport:
    """Compare ``candidate`` with ``reference`` on ``data`` (or on seeded random inputs).

    Outputs are matched by position, so a renamed output still compares. With labels and
    ``task="classification"`` the first output's argmax gives each artifact's accuracy; with
    ``task="binary"`` the first output (one score per row) gives each one's AUC and log-loss.
    ``reference_cache``: the reference's outputs on these inputs (an empty dict is filled):
    several candidates on the same data run the reference once (~20 s for EfficientNet).
    ``task="detection"``: the first output's frame-level precision, recall and F1.
    ``sequence``: a stateful model's settings; the data's rows are run as its sequences.
    """
    gates = gates or Gates()
    random_inputs = data is None
    data = comparison_data(reference, data, samples, batch_size, seed, sequence)
    ref_out = reference_cache or run_all(reference, data, batch_size, threads, sequence)
    if reference_cache is not None and not reference_cache:
        reference_cache.update(ref_out)
    cand_out = run_all(candidate, data, batch_size, threads, sequence)
    report = build_report(
        reference.name, candidate.name, ref_out, cand_out, data.labels, gates, task
    )
    report.random_inputs = random_inputs
    return report


def _check_labels(labels: np.ndarray, samples: int) -> None:
    if len(labels) != samples:
        raise DataError(f"{len(labels)} labels for {samples} samples: give one label per sample")


def _nonfinite(value: np.ndarray) -> int:
    return int(np.count_nonzero(~np.isfinite(value))) if value.dtype.kind in "fc" else 0


def run_alone(
    artifact: Artifact,
    data: Dataset | None = None,
    *,
    samples: int | None = None,
    batch_size: int = 64,
    threads: int | None = None,
    task: str = "classification",
    seed: int = 0,
    sequence: SequenceConfig | None = None,
) -> ValidationReport:
    """Run ``artifact`` once on ``data`` (or seeded random inputs), comparing nothing: for
    a model that is its own reference, whose parity with itself would be exact by
    construction. The run shows that it loads and answers in its runtime, each output's
    shape and NaN/Inf count, and with labels (classification) its accuracy. No gates: NaN/Inf
    are judged against a reference, and a model may return NaN for inputs it never sees.
    """
    random_inputs = data is None
    data = comparison_data(artifact, data, samples, batch_size, seed, sequence)
    outputs = run_all(artifact, data, batch_size, threads, sequence)
    ran = [OutputRun(name, list(value.shape), _nonfinite(value)) for name, value in outputs.items()]
    first, name = next(iter(outputs.values())), artifact.name
    report = ValidationReport(name, name, len(first), [], random_inputs=random_inputs)
    report.parity, report.ran = False, ran
    if data.labels is not None:
        _check_labels(data.labels, len(first))
        _task_metrics(report, "candidate", first, data.labels, task)
        if task == "embedding":
            report.ranking_candidate = ranking(first, first, data.labels).candidate
    return report


def _task_metrics(
    report: ValidationReport, side: str, first: np.ndarray, labels: np.ndarray, task: str
) -> None:
    """Set ``side``'s (``reference``/``candidate``) task metrics from its first output."""
    if task == "classification":
        setattr(report, f"accuracy_{side}", _accuracy(first, labels))
    elif task == "binary":
        scores = binary_scores(first, labels)
        setattr(report, f"auc_{side}", scores.auc)
        setattr(report, f"log_loss_{side}", scores.log_loss)
    elif task == "detection":
        found = detection_scores(first, labels)
        setattr(report, f"precision_{side}", found.precision)
        setattr(report, f"recall_{side}", found.recall)
        setattr(report, f"f1_{side}", found.f1)


def build_report(
    reference: str,
    candidate: str,
    ref_out: dict[str, np.ndarray],
    cand_out: dict[str, np.ndarray],
    labels: np.ndarray | None,
    gates: Gates,
    task: str = "classification",
) -> ValidationReport:
    """Compare two runs' outputs (matched by position) and apply the gates.

    Raises ComparisonError when the two differ in output count or shape, DataError when
    ``labels`` do not give one label per sample.
    """
    if len(ref_out) != len(cand_out):
        raise ComparisonError(
            f"{reference} returns {len(ref_out)} outputs {list(ref_out)} but {candidate} returns "
            f"{len(cand_out)} {list(cand_out)}; outputs are matched by position, so both must "
            f"return the same outputs: compare artifacts made from the same model"
        )
    outputs = [
        compare_output(
            name,
            ref_out[name],
            cand_out[cand_name],
            gates,
            reference=reference,
            candidate=candidate,
            classes=task != "embedding",
        )
        for name, cand_name in zip(ref_out, cand_out, strict=True)
    ]
    samples = len(next(iter(ref_out.values())))
    if labels is not None:
        _check_labels(labels, samples)
    report = ValidationReport(reference, candidate, samples, outputs)
    if labels is not None:
        first_ref, first_cand = next(iter(ref_out.values())), next(iter(cand_out.values()))
        _task_metrics(report, "reference", first_ref, labels, task)
        _task_metrics(report, "candidate", first_cand, labels, task)
        if task == "embedding":
            check = ranking(first_ref, first_cand, labels)
            report.ranking_triplets, report.ranking_agreement = check.triplets, check.agreement
            report.ranking_reference, report.ranking_candidate = check.reference, check.candidate
    report.gates = gate_results(report, gates)
    return report
