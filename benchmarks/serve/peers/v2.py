"""What every peer shares: the ONNX Runtime session and the V2 JSON tensor codec.

Imported by the peers' servers inside their own virtual environments (onnxruntime and numpy
only). The session matches ours and the in-process ceiling: 1 intra-op and 1 inter-op thread,
sequential execution, all graph optimizations.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort

DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}
DATATYPES = {np.dtype(v): k for k, v in DTYPES.items()}


def open_session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def decode(body: dict[str, Any]) -> dict[str, np.ndarray]:
    """A V2 JSON request body -> {input name: array} (tensors given as flat or nested data)."""
    feeds = {}
    for tensor in body["inputs"]:
        array = np.asarray(tensor["data"], dtype=DTYPES[tensor["datatype"]])
        feeds[tensor["name"]] = array.reshape(tensor["shape"])
    return feeds


def encode(model: str, outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """{output name: array} -> a V2 JSON response body (flat row-major data)."""
    return {
        "model_name": model,
        "outputs": [
            {
                "name": name,
                "datatype": DATATYPES[array.dtype],
                "shape": list(array.shape),
                "data": array.ravel().tolist(),
            }
            for name, array in outputs.items()
        ],
    }
