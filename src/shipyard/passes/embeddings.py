"""Embedding tables in an ONNX graph, and storing them in float16 beside int8 layers.

An embedding lookup exports as ``Gather(table, ids)`` with the table a float initializer.
ONNX Runtime's quantizer quantizes such a Gather like a weight in every int8 mode (dynamic,
static QDQ and QOperator: ``GatherQuant``/``QDQGather``), one scale for the whole table.
``quantize: {embeddings: fp32}`` keeps the tables out of it; ``embeddings: fp16`` keeps them
out and then stores them as float16, each lookup followed by a Cast to float32, so that the
rest of the graph (the int8 MLPs) is unchanged. ORT's float16 converter cannot do this: it
converts whole graphs, and would also touch the quantized layers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def embedding_lookups(graph: onnx.GraphProto) -> dict[str, str]:
    """``{Gather node name: table initializer name}`` for every Gather whose data input is a
    float32 initializer: the embedding lookups (a Gather of a computed tensor, such as a
    shape, is not one)."""
    tables = {init.name for init in graph.initializer if init.data_type == TensorProto.FLOAT}
    return {
        node.name: node.input[0]
        for node in graph.node
        if node.op_type == "Gather" and node.input[0] in tables
    }


def _consumers(graph: onnx.GraphProto, tensor: str) -> list[tuple[onnx.NodeProto, int]]:
    return [
        (node, index)
        for node in graph.node
        for index, name in enumerate(node.input)
        if name == tensor
    ]


def tables_to_fp16(path: Path, lookups: dict[str, str]) -> dict[str, Any]:
    """Store the tables of ``lookups`` (from :func:`embedding_lookups`) in ``path`` as float16,
    each lookup then cast to float32; rewrite the file. Returns the notes: each table's shape,
    and the tables left in float32 because something other than a lookup also reads them
    (a weight tied to an output layer)."""
    model = onnx.load(str(path))
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    nodes = {node.name: node for node in graph.node}
    converted: dict[str, list[int]] = {}
    shared: list[str] = []
    for table in sorted(set(lookups.values())):
        readers = _consumers(graph, table)
        if any(node.op_type != "Gather" or index != 0 for node, index in readers):
            shared.append(table)
            continue
        values = numpy_helper.to_array(initializers[table])
        initializers[table].CopyFrom(numpy_helper.from_array(values.astype(np.float16), table))
        converted[table] = list(values.shape)
    casts: dict[str, onnx.NodeProto] = {}
    for name, table in lookups.items():
        if table not in converted:
            continue
        node = nodes[name]
        output = node.output[0]
        node.output[0] = f"{output}_fp16"
        casts[name] = helper.make_node(
            "Cast", [node.output[0]], [output], name=f"{name}_to_float", to=TensorProto.FLOAT
        )
    # Each Cast right after its lookup: the node list stays topologically sorted.
    ordered = [n for node in graph.node for n in (node, casts.get(node.name)) if n is not None]
    del graph.node[:]
    graph.node.extend(ordered)
    onnx.save(model, str(path))
    return {"stored": "fp16", "tables": converted, "kept_fp32_shared": shared}
