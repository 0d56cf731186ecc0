"""A recommender through the real server: one request scores one user against N candidate
items (N rows, five inputs of two dtypes), over V2 JSON and binary (tritonclient); an id
outside its signature range is a 400 that names the input."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

import shipyard
from shipyard.artifact import Artifact
from shipyard.recipe import load_recipe
from tests.conftest import RECSYS_RECIPE
from tests.serve.conftest import Server, serving

DATATYPES = {"int64": "INT64", "float32": "FP32"}


@pytest.fixture(scope="module")
def server(recsys_torch: Artifact, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The example recipe built as it is (validation on 2,000 held-out ratings), served."""
    root = tmp_path_factory.mktemp("recsys-serve")
    recipe = load_recipe(RECSYS_RECIPE)
    recipe.validate_.samples = 2000
    shipyard.build(recipe, root, run_bench=False)
    with serving(root) as running:
        yield running


def _package(server: Server) -> Path:
    return Path(server.app.server.repository.root) / "movielens" / "1"


def _expected(server: Server, request: dict[str, np.ndarray]) -> np.ndarray:
    package = shipyard.load_package(_package(server))
    with shipyard.open_session(package.artifacts[0], threads=1) as session:
        return session.run(request)["probability"]


def _json_body(request: dict[str, np.ndarray]) -> dict[str, object]:
    return {
        "inputs": [
            {
                "name": name,
                "datatype": DATATYPES[str(array.dtype)],
                "shape": list(array.shape),
                "data": array.ravel().tolist(),
            }
            for name, array in request.items()
        ]
    }


@pytest.mark.parametrize("count", [1, 256])
def test_one_user_against_n_candidates_over_json(server: Server, count: int) -> None:
    from shipyard.examples.recsys import candidates

    request = candidates(41, np.arange(count) * 6)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        answer = client.post("/v2/models/movielens/infer", json=_json_body(request))
    assert answer.status_code == 200, answer.text
    (output,) = answer.json()["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("probability", "FP32", [count])
    np.testing.assert_allclose(output["data"], _expected(server, request), atol=1e-6)


def test_binary_tensors_through_tritonclient(server: Server) -> None:
    from shipyard.examples.recsys import candidates

    request = candidates(7, np.arange(0, 1682, 5))  # 337 candidate items
    client = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
    tensors = []
    for name, array in request.items():
        tensor = triton_http.InferInput(name, list(array.shape), DATATYPES[str(array.dtype)])
        tensor.set_data_from_numpy(array, binary_data=True)
        tensors.append(tensor)
    wanted = [triton_http.InferRequestedOutput("probability", binary_data=True)]
    result = client.infer("movielens", tensors, outputs=wanted)
    scores = result.as_numpy("probability")
    assert scores.shape == (337,) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, _expected(server, request), atol=1e-6)
    metadata = client.get_model_metadata("movielens")
    assert [(i["name"], i["datatype"]) for i in metadata["inputs"]] == [
        ("user", "INT64"),
        ("item", "INT64"),
        ("gender", "INT64"),
        ("occupation", "INT64"),
        ("dense", "FP32"),
    ]
    # an item id past the table over binary: refused the same way, naming the input
    request["item"][3] = 1682
    tensors[1].set_data_from_numpy(request["item"], binary_data=True)
    with pytest.raises(InferenceServerException) as refused:
        client.infer("movielens", tensors, outputs=wanted)
    assert "input 'item' holds 1 value(s) outside its range [0, 1681]" in refused.value.message()
    assert "(the first at flat index 3: 1682)" in refused.value.message()


def test_an_out_of_range_user_is_a_400_naming_the_input(server: Server) -> None:
    from shipyard.examples.recsys import candidates

    request = candidates(12, np.arange(10))
    request["user"][:] = 943  # one past the 943 users the table holds
    with httpx.Client(base_url=server.url, timeout=30) as client:
        answer = client.post("/v2/models/movielens/infer", json=_json_body(request))
        assert answer.status_code == 400
        assert answer.json()["error"].startswith(
            "input 'user' holds 10 value(s) outside its range [0, 942] (the first at flat "
            "index 0: 943)"
        )
        # a wrong dtype for an id is refused too, and the server still serves afterwards
        body = _json_body(candidates(12, np.arange(10)))
        body["inputs"][2]["datatype"] = "FP32"  # type: ignore[index]
        wrong = client.post("/v2/models/movielens/infer", json=body)
        assert wrong.status_code == 400 and "gender" in wrong.json()["error"]
        ok = client.post("/v2/models/movielens/infer", json=_json_body(candidates(12, [5])))
        assert ok.status_code == 200, ok.text


def test_the_package_records_the_task_ranges_and_auc(server: Server) -> None:
    manifest = shipyard.load_package(_package(server)).manifest
    assert manifest["task"] == "binary"
    ranges = {spec["name"]: spec.get("range") for spec in manifest["signature"]["inputs"]}
    assert ranges == {
        "user": [0, 942],
        "item": [0, 1681],
        "gender": [0, 1],
        "occupation": [0, 20],
        "dense": None,
    }
    (report,) = manifest["validation"]
    assert report["samples"] == 2000 and report["auc_reference"] > 0.6
    assert report["auc_drop"] == pytest.approx(0.0, abs=1e-4)
    gates = {g["gate"]: g for g in report["gates"]}
    assert gates["max_auc_drop"]["passed"] and gates["max_auc_drop"]["bound"] == "max"
    assert manifest["serving"]["max_batch_size"] == 1024


def test_the_demo_request_is_answered(server: Server, tmp_path: Path) -> None:
    from shipyard.examples.recsys import request

    path = tmp_path / "request.json"
    assert request.main([str(path), "12", "5"]) == 0
    body = path.read_text()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        answer = client.post(
            "/v2/models/movielens/infer", content=body, headers={"Content-Type": "application/json"}
        )
    assert answer.status_code == 200, answer.text
    reply = answer.json()
    assert reply["id"] == "user 12 against 5 candidate items"
    scores = reply["outputs"][0]["data"]
    assert len(scores) == 5 and all(0 < s < 1 for s in scores)
