"""What the server is given: a repository, one model folder or one package folder; strict
startup; the startup report; which artifact is served and why."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from shipyard.package import seal
from shipyard.serve import run_server
from shipyard.serve.app import Startup
from shipyard.serve.errors import RepositoryError
from shipyard.serve.layout import Layout, find_layout, suggest
from tests.serve.conftest import add_version, serving

BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.5] * 64}]}


@pytest.fixture
def out(packages: Path, tmp_path: Path) -> Path:
    """A build output: tiny v1 + v2 (v1 asks for a policy it cannot meet) and a sibling."""
    root = tmp_path / "out"
    add_version(packages, root, "tiny", 1, serving={"version_policy": {"specific": [7]}})
    add_version(packages, root, "tiny", 2)
    add_version(packages, root, "sibling", 1, source=("tiny", 1))
    return root


def test_find_layout_tells_the_three_apart(out: Path) -> None:
    assert find_layout(out) == Layout("repository", out.resolve())
    assert find_layout(out / "tiny") == Layout("model", (out / "tiny").resolve(), "tiny")
    package = (out / "tiny" / "1").resolve()
    assert find_layout(out / "tiny" / "1") == Layout("package", package, "tiny", 1)


def test_a_package_folder_serves_that_version_alone(out: Path) -> None:
    with serving(out / "tiny" / "1") as server, httpx.Client(base_url=server.url) as client:
        # Version 1's own policy (specific: [7]) does not stop the package it is part of.
        assert client.get("/v2/models/tiny").json()["versions"] == ["1"]
        answer = client.post("/v2/models/tiny/infer", json=BODY)
        assert answer.status_code == 200 and answer.json()["model_version"] == "1"
        assert client.post("/v2/models/tiny/versions/2/infer", json=BODY).status_code == 404
        assert client.get("/v2/models/sibling").status_code == 404
        index = client.post("/v2/repository/index").json()
        assert [(e["name"], e["version"]) for e in index] == [("tiny", "1")]
        # Siblings stay out of reach, also through the repository extension.
        load = client.post("/v2/repository/models/sibling/load")
        assert load.status_code == 404 and "no model 'sibling'" in load.json()["error"]
        assert client.get("/v2/health/ready").status_code == 200


def test_a_model_folder_serves_that_model_alone(out: Path) -> None:
    with serving(out / "tiny") as server, httpx.Client(base_url=server.url) as client:
        assert client.get("/v2/models/tiny").json()["versions"] == ["2"]  # latest 1
        assert client.post("/v2/models/tiny/infer", json=BODY).json()["model_version"] == "2"
        index = client.post("/v2/repository/index").json()
        assert {e["name"] for e in index} == {"tiny"}
        assert client.post("/v2/repository/models/sibling/load").status_code == 404
        assert client.get("/v2/models/sibling").status_code == 404


def test_folders_that_hold_no_version_are_not_models(out: Path) -> None:
    (out / "reports").mkdir()
    (out / "reports" / "index.html").write_text("<p>")
    with serving(out) as server, httpx.Client(base_url=server.url) as client:
        assert client.get("/v2/health/ready").status_code == 200
        names = {e["name"] for e in client.post("/v2/repository/index").json()}
        assert names == {"tiny", "sibling"}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: root / "missing", "missing is not a folder: pass a repository"),
        (lambda root: _file(root / "model.onnx"), "model.onnx is a file, not a folder: pass a"),
        (lambda root: _package(root / "pkg", {"name": "../x", "version": 1}), "invalid model name"),
        (lambda root: _package(root / "pkg", {"name": "m", "version": "1"}), "invalid version"),
        (lambda root: _package(root / "pkg", None), "has no readable name and version"),
        # A model folder whose name is not a model name.
        (lambda root: _package(root / "bad name" / "1", {}).parent, "rename the folder"),
    ],
)
def test_what_cannot_be_served_says_what_to_pass(
    tmp_path: Path, make: Callable[[Path], Path], message: str
) -> None:
    with pytest.raises(RepositoryError, match=re.escape(message)):
        find_layout(make(tmp_path))


def test_a_model_file_given_to_the_server_says_how_to_serve_it(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError) as error:
        find_layout(_file(tmp_path / "model.onnx"))
    assert str(error.value).endswith(
        "; package a model file first (shipyard package FILE -o REPO), or serve it with "
        "shipyard serve FILE, which does"
    )


def _file(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _package(path: Path, manifest: dict | None) -> Path:
    path.mkdir(parents=True)
    (path / "shipyard.json").write_text("{not json" if manifest is None else json.dumps(manifest))
    return path


def test_an_empty_folder_suggests_the_repository_below_it(out: Path) -> None:
    project = out.parent
    assert str(out) in suggest(find_layout(project))
    assert "did you mean" not in suggest(find_layout(out / "tiny" / "1"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_strict_refuses_an_empty_repository_before_opening_a_port(tmp_path: Path) -> None:
    port = _free_port()
    with pytest.raises(RepositoryError, match=r"refusing to start \(strict\): no model in"):
        run_server(tmp_path, port=port, strict=True, log_level="warning")
    with socket.socket() as probe:  # the port was never taken
        probe.bind(("127.0.0.1", port))


def test_strict_refuses_a_model_that_fails_to_load(out: Path) -> None:
    (out / "tiny" / "2" / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(RepositoryError, match="1 model.s. failed to load: model 'tiny'") as caught:
        run_server(out, port=_free_port(), strict=True, log_level="warning")
    assert "modified after packaging" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_on_loaded_reports_every_version_and_the_served_artifact(packages: Path, out: Path) -> None:
    broken = add_version(packages, out, "broken", 1, source=("tiny", 1))
    (broken / "shipyard.json").write_text("{not json")
    reports: list[Startup] = []
    with serving(out, grpc_port=0, on_loaded=reports.append) as server:
        (startup,) = reports  # once, and before the server reported ready
        assert startup.grpc_port == server.app.server.grpc_port
        assert startup.layout.kind == "repository"
        rows = {(row.model, row.version): row for row in startup.rows}
        assert set(rows) == {("broken", 1), ("sibling", 1), ("tiny", 2)}
        assert rows[("broken", 1)].served is None and "cannot read" in rows[("broken", 1)].reason
        tiny = rows[("tiny", 2)].served
        assert tiny is not None and tiny.artifact_file == "model.onnx"
        assert tiny.artifact_reason == "the only artifact"  # the build's reason


def _set_manifest(folder: Path, **values: object) -> None:
    """Change manifest fields (None removes one) and seal it again, as a build would."""
    manifest = json.loads((folder / "shipyard.json").read_text())
    manifest.update(values)
    seal(folder, {k: v for k, v in manifest.items() if v is not None})


def test_the_config_endpoint_says_which_artifact_is_served_and_why(
    packages: Path, tmp_path: Path
) -> None:
    old = add_version(packages, tmp_path, "old", 1, source=("tiny", 1))
    _set_manifest(old, default_artifact_reason=None)  # no reason: an older package
    reasoned = add_version(packages, tmp_path, "reasoned", 1, source=("tiny", 1))
    _set_manifest(reasoned, default_artifact_reason="fastest at batch 1 among those that passed")
    add_version(packages, tmp_path, "named", 1, source=("tiny", 1), serving={"artifact": "onnx"})
    with serving(tmp_path) as server, httpx.Client(base_url=server.url) as client:
        why = {}
        for model in ("old", "reasoned", "named"):
            config = client.get(f"/v2/models/{model}/versions/1/config").json()
            assert config["default_model_filename"] == "model.onnx"
            assert config["parameters"]["artifact"] == {"string_value": "onnx"}
            why[model] = config["parameters"]["artifact_reason"]["string_value"]
    assert why == {
        "old": "the package's default artifact",
        "reasoned": "fastest at batch 1 among those that passed",
        "named": "named by serving.artifact (the recipe's serve: artifact:)",
    }
