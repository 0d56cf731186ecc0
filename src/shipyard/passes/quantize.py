"""Quantize an ONNX artifact to int8 (static or dynamic) or float16 with ONNX Runtime's own tools.

``quantize_onnx(artifact, path, config, calibration)`` runs ``quant_pre_process`` (optional),
then ``quantize_static`` / ``quantize_dynamic`` or ``convert_float_to_float16``, checks the
result with ``onnx.checker`` and writes it atomically. The pass record's notes say what
happened: sizes, which ops now run quantized, the reduce_range decision and whether
pre-processing ran. ``PRESETS`` (``QuantizeConfig.static_qdq_u8s8()``...) are what the
optimization search enumerates; experts override single fields.
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnxruntime import quantization as ortq

from shipyard.artifact import Artifact, PassRecord, atomic_path
from shipyard.data import Dataset, check_dataset
from shipyard.errors import DataError, QuantizeError
from shipyard.hardware import hardware_fingerprint
from shipyard.passes.embeddings import embedding_lookups, tables_to_fp16
from shipyard.passes.quantize_config import QuantizeConfig
from shipyard.passes.quiet import quiet
from shipyard.signature import Signature, TensorSpec

if TYPE_CHECKING:
    from shipyard.passes.context import PassContext

log = logging.getLogger("shipyard.quantize")

_QUANT_TYPES = {"int8": ortq.QuantType.QInt8, "uint8": ortq.QuantType.QUInt8}
_CALIBRATORS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
# Calibration batch when the batch dim is dynamic. MinMax ranges do not depend on it (ORT
# reduces each batch to its min and max); 8 was as fast as 32 on ResNet-18 with a third of
# the memory, and ~10% faster than batch 1.
_CALIBRATION_BATCH = 8
# The histogram calibrators (entropy, percentile) keep every intermediate tensor of one
# collect call (~23 MB per ResNet-18 image): collect about this many samples at a time.
_HISTOGRAM_CHUNK = 32
_VNNI = {"avx512_vnni", "avx_vnni"}
_X86 = {"sse4_2", "avx", "avx2", "avx512f"}
# Ops that compute in integers themselves (QOperator format, dynamic quantization).
_INTEGER_OPS = ("QLinear", "QGemm", "QAttention", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")
_CONVERSION_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
# quant_pre_process runs in a child process whose current folder is a temporary one: when
# symbolic shape inference fails, ORT 1.32 saves its model into the *current folder*, weights
# beside it under a uuid name (90 MB for MiniLM), and leaves them there. The child's folder
# is removed with everything in it, whatever happens; the child costs ~0.3 s of CPU.
_PRE_PROCESS = (
    "import sys\n"
    "from onnxruntime.quantization.shape_inference import quant_pre_process\n"
    "quant_pre_process(sys.argv[1], sys.argv[2])\n"
)


class _DatasetReader(ortq.CalibrationDataReader):
    """Feeds a Dataset to ORT's calibrator batch by batch; ``set_range`` lets ORT chunk it."""

    def __init__(self, dataset: Dataset, batch: int) -> None:
        self.batch = batch
        self._batches = list(dataset.batches(batch))  # slices along axis 0: views, no copies
        self._next, self._end = 0, len(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        self._next += 1
        return self._batches[self._next - 1] if self._next <= self._end else None

    def __len__(self) -> int:
        return len(self._batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next, self._end = start_index, min(end_index, len(self._batches))


def _decide_reduce_range(config: QuantizeConfig) -> tuple[bool, str]:
    """Resolve ``reduce_range`` and say why, for the notes."""
    if config.mode == "fp16":
        return False, "not applicable to fp16"
    if config.reduce_range != "auto":
        return config.reduce_range, "set in the config"
    if config.weights == "uint8":
        return False, "auto: uint8 weights use u8u8 kernels, which do not saturate"
    isa = set(hardware_fingerprint()["isa"])
    if isa & _VNNI:
        return False, f"auto: this CPU has {'/'.join(sorted(isa & _VNNI))}, no u8s8 saturation"
    if isa & _X86:
        return True, "auto: x86 CPU without VNNI; ORT advises 7-bit weights (u8s8 may saturate)"
    return False, f"auto: not an x86 CPU without VNNI (isa {sorted(isa) or 'unknown'})"


def _preprocess(source: Path, workdir: Path) -> tuple[Path, str]:
    """``quant_pre_process`` into ``workdir`` (its scratch files too: see ``_PRE_PROCESS``);
    on failure warn and go on with ``source``."""
    workdir = workdir.resolve()  # the child runs in another folder
    target, scratch = workdir / "preprocessed.onnx", workdir / "scratch"
    scratch.mkdir()
    environment = {**os.environ, "TMPDIR": str(scratch)}
    command = [sys.executable, "-c", _PRE_PROCESS, str(source.resolve()), str(target)]
    done = subprocess.run(command, cwd=scratch, env=environment, capture_output=True, text=True)
    shutil.rmtree(scratch, ignore_errors=True)
    if done.returncode != 0 or not target.is_file():
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit status {done.returncode}"
        warnings.warn(f"quant_pre_process failed ({reason}); quantizing without it", stacklevel=3)
        return source, f"failed: {reason}"
    return target, "ran"


def _resolve_exclusions(graph: onnx.GraphProto, config: QuantizeConfig) -> list[str]:
    """Node names for ``exclude_nodes`` patterns and ``exclude_op_types``; unknown ones raise."""
    names = [node.name for node in graph.node]
    excluded: set[str] = set()
    for pattern in config.exclude_nodes:
        matched = fnmatch.filter(names, pattern)
        if not matched:
            close = difflib.get_close_matches(pattern, names, n=5, cutoff=0.0)
            raise QuantizeError(
                f"quantize: exclude_nodes pattern {pattern!r} matches none of the model's "
                f"{len(names)} nodes; closest names: {', '.join(close)}"
            )
        excluded.update(matched)
    op_types = sorted({node.op_type for node in graph.node})
    for op_type in config.exclude_op_types:
        if op_type not in op_types:
            raise QuantizeError(
                f"quantize: exclude_op_types {op_type!r} is not in the model; its op types: "
                f"{', '.join(op_types)}"
            )
        excluded.update(node.name for node in graph.node if node.op_type == op_type)
    return sorted(excluded)


def _calibration_reader(
    calibration: Dataset | None, signature: Signature, config: QuantizeConfig
) -> tuple[_DatasetReader, dict[str, Any]]:
    if calibration is None:
        raise DataError(
            "static quantization needs calibration data: set 'data: calibration:' in the recipe "
            "(a .npz/.npy file or 'pkg.module:function'; 'data: train:' works too), pass "
            "calibration= to quantize_onnx, or use mode: dynamic"
        )
    check_dataset(calibration, signature, "calibration")
    data = calibration.take(config.calibration_samples)
    # A fixed batch dim (say an export with batch 1) takes one sample per run.
    dynamic = all(spec.shape and isinstance(spec.shape[0], str) for spec in signature.inputs)
    batch = _CALIBRATION_BATCH if dynamic else 1
    return _DatasetReader(data, batch), {"samples": len(data), "batch": batch}


def _quantize_int8(
    source: Path, target: Path, config: QuantizeConfig, reader: _DatasetReader | None, **common: Any
) -> None:
    """``quantize_dynamic`` or ``quantize_static``; ``common`` holds the options both take."""
    common.update(weight_type=_QUANT_TYPES[config.weights], per_channel=config.per_channel)
    if config.mode == "dynamic":
        ortq.quantize_dynamic(str(source), str(target), **common)
        return
    assert reader is not None
    extra: dict[str, Any] = {}
    if config.symmetric:
        extra.update(ActivationSymmetric=True, WeightSymmetric=True)
    if not config.quantize_bias:
        extra["QuantizeBias"] = False
    if config.calibration != "minmax":
        # ORT collects one chunk at a time when the chunk size divides the number of batches.
        chunk = max(1, _HISTOGRAM_CHUNK // reader.batch)
        extra["CalibStridedMinMax"] = max(d for d in range(1, chunk + 1) if len(reader) % d == 0)
    # Not CalibMaxIntermediateOutputs: in ORT 1.32 it drops the collected ranges ("No data is
    # collected", or silently only the last batches) instead of merging them.
    ortq.quantize_static(
        str(source),
        str(target),
        reader,
        quant_format=ortq.QuantFormat.QDQ if config.format == "qdq" else ortq.QuantFormat.QOperator,
        activation_type=_QUANT_TYPES[config.activations],
        calibrate_method=ortq.CalibrationMethod[_CALIBRATORS[config.calibration]],
        extra_options=extra,
        **common,
    )


def _convert_fp16(source: Path, target: Path, config: QuantizeConfig, excluded: list[str]) -> None:
    """ORT's own float16 converter: it ships in every onnxruntime wheel (onnxconverter-common
    holds an older copy of the same code, so it is not needed)."""
    from onnxruntime.transformers import float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = float16.convert_float_to_float16(
        onnx.load(str(source)),
        keep_io_types=config.keep_io_types,
        # the defaults are ops without float16 kernels: extend the list, never replace it
        op_block_list=[*float16.DEFAULT_OP_BLOCK_LIST, *config.exclude_op_types],
        node_block_list=excluded,
    )
    # The converter appends the input Casts at the end of the graph: ORT sorts on load, but
    # onnx.checker (and other runtimes) need topological order.
    OnnxModel.graph_topological_sort(model.graph)
    onnx.save(model, str(target))


def _float_lookups(
    graph: onnx.GraphProto, config: QuantizeConfig, notes: dict[str, Any]
) -> dict[str, str]:
    """The embedding lookups int8 quantization must leave alone (``embeddings: fp16|fp32``);
    a model without any gets a warning and a note, and is quantized as it would be anyway."""
    if config.mode == "fp16" or config.embeddings == "int8":
        return {}
    lookups = embedding_lookups(graph)
    notes["embeddings"] = {"stored": config.embeddings, "tables": sorted(set(lookups.values()))}
    if not lookups:
        message = f"embeddings: {config.embeddings}: the model has no embedding table"
        warnings.warn(f"quantize: {message} (Gather from a float initializer)", stacklevel=3)
        notes["embeddings"]["note"] = message
    return lookups


def _summary(before: Artifact, path: Path) -> dict[str, Any]:
    """Sizes, node counts, and the op types that now run quantized: integer ops (QOperator,
    dynamic) and, in QDQ graphs, the ops fed by a DequantizeLinear (ORT fuses those)."""
    original, model = onnx.load(str(before.path)), onnx.load(str(path))
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    quantized: Counter[str] = Counter()
    for node in model.graph.node:
        integer = node.op_type.startswith(_INTEGER_OPS) or node.op_type.endswith("Integer")
        fed = dequantized.intersection(node.input)
        if node.op_type not in _CONVERSION_OPS and (integer or fed):
            quantized[node.op_type] += 1
    casts = [sum(n.op_type == "Cast" for n in m.graph.node) for m in (original, model)]
    return {
        "bytes_before": before.size_bytes,
        "bytes_after": path.stat().st_size,
        "ratio": round(before.size_bytes / path.stat().st_size, 2),
        "nodes_before": len(original.graph.node),
        "nodes_after": len(model.graph.node),
        "quantized_ops": dict(sorted(quantized.items())),
        "casts_added": casts[1] - casts[0],
    }


def _half_io(signature: Signature) -> Signature:
    def half(specs: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
        return tuple(
            s.model_copy(update={"dtype": "float16"}) if s.dtype == "float32" else s for s in specs
        )

    return Signature(inputs=half(signature.inputs), outputs=half(signature.outputs))


def quantize_onnx(
    artifact: Artifact, path: str | Path, config: QuantizeConfig, calibration: Dataset | None = None
) -> Artifact:
    """Quantize an ONNX artifact into ``path``; return the new artifact.

    ``calibration`` (inputs by name, first axis = samples) is needed by ``mode: static``; its
    first ``calibration_samples`` samples are used. Raises QuantizeError for a non-ONNX input,
    an exclusion that matches nothing or a quantizer failure (with ORT's reason), DataError for
    missing or mismatched calibration data.
    """
    if artifact.format != "onnx" or artifact.path is None:
        raise QuantizeError(
            f"quantize needs an ONNX artifact, got {artifact.describe()}: put 'export' before "
            f"'quantize' in the recipe's passes"
        )
    started, path = time.perf_counter(), Path(path)
    reader: _DatasetReader | None = None
    notes: dict[str, Any] = {}
    if config.mode == "static":  # check the data before any slow step
        reader, notes["calibration"] = _calibration_reader(calibration, artifact.signature, config)
    reduce_range, notes["reduce_range_reason"] = _decide_reduce_range(config)
    notes["reduce_range"] = reduce_range
    with (
        atomic_path(path) as tmp,
        tempfile.TemporaryDirectory(prefix=".quantize-", dir=path.parent) as workdir,
    ):
        source = artifact.path
        if config.mode == "fp16":
            notes["preprocess"] = "not used by fp16"
        elif config.preprocess:
            source, notes["preprocess"] = _preprocess(artifact.path, Path(workdir))
        else:
            notes["preprocess"] = "off in the config"
        graph = onnx.load(str(source)).graph
        excluded = _resolve_exclusions(graph, config)
        lookups = _float_lookups(graph, config, notes)
        try:
            with quiet(log, "onnxruntime", root=True, stderr=False):
                if config.mode == "fp16":
                    _convert_fp16(source, tmp, config, excluded)
                else:
                    skip = sorted({*excluded, *lookups})
                    options = {"reduce_range": reduce_range, "nodes_to_exclude": skip}
                    _quantize_int8(source, tmp, config, reader, **options)
                    if config.embeddings == "fp16" and lookups:
                        notes["embeddings"] = tables_to_fp16(tmp, lookups)
            onnx.checker.check_model(str(tmp), full_check=True)
        except Exception as error:  # ORT's or the checker's own reason, on one line
            raise QuantizeError(
                f"quantize ({config.label()}) failed on {artifact.describe()}: "
                f"{type(error).__name__}: {error}"
            ) from error
        notes.update(_summary(artifact, tmp), excluded_nodes=excluded)
    io_16 = config.mode == "fp16" and not config.keep_io_types
    signature = _half_io(artifact.signature) if io_16 else artifact.signature
    record = PassRecord("quantize", config.model_dump(), time.perf_counter() - started, notes)
    provenance = [*artifact.provenance, record]
    return Artifact(config.artifact_name(), "onnx", signature, path=path, provenance=provenance)


def run_quantize(artifact: Artifact, config: QuantizeConfig, context: PassContext) -> Artifact:
    """The pass: calibrates on ``data: calibration:``, else on ``data: train:``."""
    key, data = context.calibration()
    path = context.new_file("quantize", config.output_filename(), "'filename' and 'name'")
    result = quantize_onnx(artifact, path, config, data)
    if config.mode == "static":
        result.provenance[-1].notes["calibration"]["data"] = key
    return result
