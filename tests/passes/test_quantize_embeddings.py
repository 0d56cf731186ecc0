"""Embedding tables under quantization: int8 (ORT's Gather quantization), fp16 (stored half,
cast after the lookup) or fp32 (left alone), beside int8 MLPs, on the MovieLens DLRM."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from shipyard.artifact import Artifact
from shipyard.data import Dataset
from shipyard.passes.embeddings import embedding_lookups
from shipyard.passes.quantize import quantize_onnx
from shipyard.passes.quantize_config import PRESETS, QuantizeConfig, default_search
from shipyard.recipe import OptimizeSettings
from shipyard.validate import Gates, validate

TABLES = {
    "tables.user.weight": [943, 32],
    "tables.item.weight": [1682, 32],
    "tables.gender.weight": [2, 32],
    "tables.occupation.weight": [21, 32],
}


@pytest.fixture(scope="module")
def quantized(recsys_onnx: Artifact, tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("embeddings")
    return {
        stored: quantize_onnx(
            recsys_onnx, folder / f"{stored}.onnx", QuantizeConfig.dynamic_s8(embeddings=stored)
        )
        for stored in ("int8", "fp16", "fp32")
    }


def _tables(artifact: Artifact) -> dict[str, int]:
    """Data type of each table initializer still named as in the export."""
    model = onnx.load(str(artifact.path))
    return {i.name: i.data_type for i in model.graph.initializer if i.name in TABLES}


def test_the_export_has_one_lookup_per_table(recsys_onnx: Artifact) -> None:
    lookups = embedding_lookups(onnx.load(str(recsys_onnx.path)).graph)
    assert sorted(lookups.values()) == sorted(TABLES)


def test_each_storage_keeps_the_mlps_int8_and_the_tables_as_asked(quantized: dict) -> None:
    for stored, artifact in quantized.items():
        notes = artifact.provenance[-1].notes
        assert notes["quantized_ops"]["MatMulInteger"] == 5, stored  # the five Linear layers
    # int8: ORT quantizes the Gathers itself; the float tables are gone
    assert _tables(quantized["int8"]) == {}
    assert "embeddings" not in quantized["int8"].provenance[-1].notes
    assert set(_tables(quantized["fp32"]).values()) == {TensorProto.FLOAT}
    assert set(_tables(quantized["fp16"]).values()) == {TensorProto.FLOAT16}
    notes = quantized["fp16"].provenance[-1].notes["embeddings"]
    assert notes == {"stored": "fp16", "tables": TABLES, "kept_fp32_shared": []}
    casts = Counter(n.op_type for n in onnx.load(str(quantized["fp16"].path)).graph.node)
    assert casts["Cast"] >= 4
    sizes = {stored: artifact.size_bytes for stored, artifact in quantized.items()}
    table_bytes = sum(rows * dim for rows, dim in TABLES.values()) * 4
    # fp16 saves half the tables' bytes, int8 three quarters (plus a scale per table)
    assert sizes["fp32"] - sizes["fp16"] == pytest.approx(table_bytes / 2, rel=0.02)
    assert sizes["fp32"] - sizes["int8"] == pytest.approx(table_bytes * 3 / 4, rel=0.02)


def test_fp16_tables_hold_the_rounded_weights(recsys_onnx: Artifact, quantized: dict) -> None:
    original = {i.name: i for i in onnx.load(str(recsys_onnx.path)).graph.initializer}
    model = onnx.load(str(quantized["fp16"].path))
    for init in model.graph.initializer:
        if init.name in TABLES:
            half = numpy_helper.to_array(init)
            full = numpy_helper.to_array(original[init.name])
            np.testing.assert_array_equal(half, full.astype(np.float16))


def test_every_storage_keeps_the_held_out_auc(
    recsys_onnx: Artifact, quantized: dict, recsys_held_out: Dataset
) -> None:
    """Measured here: AUC drops of 0.0002 for all three (0.7029 -> 0.7027)."""
    for stored, artifact in quantized.items():
        report = validate(
            recsys_onnx,
            artifact,
            recsys_held_out,
            Gates(max_auc_drop=0.002, min_cosine=0.9999),
            batch_size=4096,
            task="binary",
        )
        assert report.passed, (stored, [g.describe() for g in report.failures()])


def test_a_model_without_tables_is_quantized_as_usual_with_a_warning(
    digits_onnx: Artifact, tmp_path: Path
) -> None:
    config = QuantizeConfig.dynamic_s8(embeddings="fp16")
    with pytest.warns(UserWarning, match="the model has no embedding table"):
        out = quantize_onnx(digits_onnx, tmp_path / "d.onnx", config)
    notes = out.provenance[-1].notes
    assert notes["embeddings"]["tables"] == [] and notes["quantized_ops"]["ConvInteger"] == 3


def test_presets_labels_and_the_default_search() -> None:
    assert PRESETS["dynamic_s8_fp16_embeddings"]().label() == "int8-dynamic-s8-emb16"
    assert PRESETS["dynamic_s8_fp32_embeddings"]().label() == "int8-dynamic-s8-emb32"
    # the default search is what it was before the table presets: a model without tables
    # (the digits CNN) is searched exactly as before
    assert default_search() == [
        "static_qdq_u8s8",
        "static_qdq_u8s8_per_channel",
        "static_qdq_u8s8_entropy",
        "static_qdq_s8s8",
        "dynamic_s8",
        "dynamic_u8",
        "fp16",
    ]
    assert OptimizeSettings().quantize == default_search()
    assert "dynamic_s8_fp16_embeddings" in OptimizeSettings(quantize=list(PRESETS)).quantize
    with pytest.raises(ValueError, match="embeddings do"):
        QuantizeConfig.fp16(embeddings="fp32")
