"""Integer inputs with a range (embedding ids): an id outside it is a 400 / INVALID_ARGUMENT
naming the input, the value and its index, over HTTP and gRPC, never a backend crash."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

import shipyard
from shipyard.recipe import parse_recipe
from tests.serve.conftest import Server, serving

RECIPE = """\
name: bag
model: {source: "tests.serve.models:embedding_bag"}
signature:
  inputs: [{name: ids, dtype: int64, shape: [batch, seq], range: [0, 9]}]
passes: [{export: {dynamo: false}}]
validate: {samples: 4}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("ranges")
    shipyard.build(parse_recipe(RECIPE), root, run_bench=False)
    with serving(root, grpc_port=0) as running:
        yield running


def _body(ids: list[list[int]]) -> dict[str, object]:
    flat = [v for row in ids for v in row]
    shape = [len(ids), len(ids[0])]
    return {"inputs": [{"name": "ids", "datatype": "INT64", "shape": shape, "data": flat}]}


def test_ids_in_range_are_served_and_out_of_range_refused_over_http(server: Server) -> None:
    with httpx.Client(base_url=server.url) as client:
        ok = client.post("/v2/models/bag/infer", json=_body([[0, 9, 3], [1, 2, 3]]))
        assert ok.status_code == 200 and ok.json()["outputs"][0]["shape"] == [2, 4], ok.text
        bad = client.post("/v2/models/bag/infer", json=_body([[0, 9, 3], [1, 10, 3]]))
        assert bad.status_code == 400
        assert bad.json()["error"].startswith(
            "input 'ids' holds 1 value(s) outside its range [0, 9] (the first at flat index 4: 10)"
        )
        metadata = client.get("/v2/models/bag").json()
        assert metadata["inputs"][0]["datatype"] == "INT64"
        assert client.post("/v2/models/bag/infer", json=_body([[5, 5]])).status_code == 200


def test_a_negative_id_over_grpc_is_invalid_argument(server: Server) -> None:
    port = server.app.server.grpc_port
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{port}")
    ids = np.array([[3, -2]], dtype=np.int64)
    tensor = triton_grpc.InferInput("ids", list(ids.shape), "INT64")
    tensor.set_data_from_numpy(ids)
    with pytest.raises(InferenceServerException) as refused:
        client.infer("bag", [tensor])
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "outside its range [0, 9] (the first at flat index 1: -2)" in refused.value.message()
    tensor.set_data_from_numpy(np.array([[3, 2]], dtype=np.int64))
    assert client.infer("bag", [tensor]).as_numpy("output").shape == (1, 4)


def test_a_session_refuses_it_too(server: Server) -> None:
    package = shipyard.load_package(Path(server.app.server.repository.root) / "bag" / "1")
    with (
        shipyard.open_session(package.artifacts[0]) as session,
        pytest.raises(shipyard.ShipyardError, match="outside its range"),
    ):
        session.run({"ids": np.array([[11]], dtype=np.int64)})
