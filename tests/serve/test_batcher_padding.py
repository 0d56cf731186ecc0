"""The batcher pads requests of token ids to the longest of a batch (as a tokenizer pads the
texts of one request), so that requests of any length share batches; a real ONNX model of an
embedding table and a masked mean gives the same answer padded or alone."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

import shipyard
from shipyard.passes.export import export_onnx
from shipyard.serve.batcher import Batcher
from shipyard.serve.metrics import ServeMetrics
from shipyard.serve.padding import paddable
from shipyard.serving import ServingConfig
from shipyard.signature import Signature, TensorSpec
from shipyard.sources import torch_artifact

TOKENS = ("batch", "seq")
SIGNATURE = Signature(
    inputs=(
        TensorSpec(name="input_ids", dtype="int64", shape=TOKENS, range=(0, 49)),
        TensorSpec(name="attention_mask", dtype="int64", shape=TOKENS, range=(0, 1)),
    ),
    outputs=(TensorSpec(name="pooled", shape=("batch", 4)),),
)
PADDING = {"input_ids": 0, "attention_mask": 0}


class MaskedMean(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.table = torch.nn.Embedding(50, 4)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).float()
        return (self.table(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> shipyard.Artifact:
    folder = tmp_path_factory.mktemp("masked-mean")
    return export_onnx(torch_artifact(MaskedMean(), SIGNATURE), folder / "model.onnx")


def _request(length: int, seed: int) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(seed).integers(1, 50, (1, length))
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def test_requests_of_other_lengths_share_a_batch_and_answer_as_alone(
    model: shipyard.Artifact,
) -> None:
    config = ServingConfig(max_batch_size=8, max_queue_delay_ms=200, preferred_batch_sizes=[4])
    metrics = ServeMetrics().version("masked", 1)
    session = shipyard.open_session(model, threads=1)
    batcher = Batcher([session], config, metrics=metrics, padding=PADDING)
    requests = [_request(length, seed) for seed, length in enumerate((3, 7, 1, 5))]

    async def run() -> list[dict[str, np.ndarray]]:
        batcher.start()
        results = await asyncio.gather(*(batcher.infer(r) for r in requests))
        await batcher.close()
        return results

    results = asyncio.run(run())
    samples = {s.name: s.value for s in metrics.batch_size.collect()[0].samples}
    assert (samples["shipyard_batch_size_count"], samples["shipyard_batch_size_sum"]) == (1, 4)
    with shipyard.open_session(model, threads=1) as alone:
        for request, result in zip(requests, results, strict=True):
            np.testing.assert_allclose(result["pooled"], alone.run(request)["pooled"], atol=1e-6)


def test_only_inputs_without_a_sequence_axis_in_the_outputs_are_padded() -> None:
    varying = ["input_ids", "attention_mask"]
    assert paddable(SIGNATURE, varying, PADDING) == PADDING
    assert paddable(SIGNATURE, varying, None) == {}
    assert paddable(SIGNATURE, varying, {"input_ids": 0}) == {}  # the mask would not be
    per_token = SIGNATURE.with_outputs([TensorSpec(name="tokens", shape=("batch", "seq", 4))])
    assert paddable(per_token, varying, PADDING) == {}  # outputs would change shape


def test_without_padding_only_equal_lengths_share_a_batch(model: shipyard.Artifact) -> None:
    config = ServingConfig(max_batch_size=8, max_queue_delay_ms=200, preferred_batch_sizes=[4])
    metrics = ServeMetrics().version("masked", 1)
    batcher = Batcher([shipyard.open_session(model, threads=1)], config, metrics=metrics)
    requests = [_request(length, seed) for seed, length in enumerate((3, 7, 3, 3, 3))]

    async def run() -> None:
        batcher.start()
        await asyncio.gather(*(batcher.infer(r) for r in requests))
        await batcher.close()

    asyncio.run(run())
    samples = {s.name: s.value for s in metrics.batch_size.collect()[0].samples}
    assert (samples["shipyard_batch_size_count"], samples["shipyard_batch_size_sum"]) == (2, 5)
