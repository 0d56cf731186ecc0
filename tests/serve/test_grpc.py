"""The V2 protocol over gRPC end to end: tritonclient[grpc] against a real server that serves
HTTP and gRPC in one process and event loop, from the same repository and batchers."""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from google.protobuf.descriptor import Descriptor
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from shipyard.serve import create_app
from shipyard.serve.grpc import inference_pb2
from shipyard.serve.grpc.codec import CONTENTS, decode_request, encode_response
from shipyard.serve.grpc.server import start_grpc_server
from shipyard.serve.protocol import DATATYPES
from tests.serve.conftest import Server, add_version, metric, reference, serving, wait_for

RNG = np.random.default_rng(0)


def _images(batch: int) -> np.ndarray:
    return RNG.standard_normal((batch, 1, 8, 8)).astype(np.float32)


def _input(x: np.ndarray, datatype: str = "FP32", name: str = "x") -> triton.InferInput:
    tensor = triton.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    return tensor


def _assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6)


def _address(server: Server) -> str:
    return f"127.0.0.1:{server.app.server.grpc_port}"


@pytest.fixture(scope="module")
def grpc_server(repository: Path) -> Iterator[Server]:
    """HTTP + gRPC over the shared repository (tiny v1+v2, policy, slow, rows)."""
    with serving(repository, grpc_port=0) as running:
        yield running


@pytest.fixture
def grpc_client(grpc_server: Server) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(_address(grpc_server))
    yield client
    client.close()


def _fails(call: Callable[[], object], code: str, message: str = "") -> str:
    """Run ``call``; assert it fails with gRPC status ``code`` and ``message`` in its details."""
    with pytest.raises(InferenceServerException) as caught:
        call()
    assert caught.value.status() == f"StatusCode.{code}", caught.value
    assert message in caught.value.message(), caught.value.message()
    return caught.value.message()


def _fields(message: Descriptor) -> dict[str, tuple[int, int, bool, str | None]]:
    fields = {}
    for f in message.fields:
        nested = f.message_type.full_name if f.message_type else None
        fields[f.name] = (f.number, f.type, f.is_repeated, nested)
    for child in message.nested_types:
        fields.update({f"{child.name}.{k}": v for k, v in _fields(child).items()})
    return fields


def test_proto_matches_tritonclient_field_for_field() -> None:
    theirs = service_pb2.DESCRIPTOR.pool
    ours = inference_pb2.DESCRIPTOR
    assert ours.package == "inference" and ours.pool is not theirs
    for name, message in ours.message_types_by_name.items():
        assert _fields(message) == _fields(theirs.FindMessageTypeByName(f"inference.{name}"))
    service = ours.services_by_name["GRPCInferenceService"]
    reference_service = theirs.FindServiceByName("inference.GRPCInferenceService")
    for method in service.methods:
        expected = reference_service.methods_by_name[method.name]
        assert method.input_type.full_name == expected.input_type.full_name
        assert method.output_type.full_name == expected.output_type.full_name


def test_health_and_metadata(grpc_client: triton.InferenceServerClient) -> None:
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()
    assert grpc_client.is_model_ready("tiny") and grpc_client.is_model_ready("tiny", "1")
    assert not grpc_client.is_model_ready("no-such-model")
    assert not grpc_client.is_model_ready("policy", "1")  # not served by its version policy
    server = grpc_client.get_server_metadata()
    assert server.name == "shipyard" and "model_repository" in server.extensions
    meta = grpc_client.get_model_metadata("tiny")
    assert (meta.name, meta.platform) == ("tiny", "onnxruntime_onnx")
    assert list(meta.versions) == ["1", "2"]
    (tensor,) = meta.inputs
    assert (tensor.name, tensor.datatype, list(tensor.shape)) == ("x", "FP32", [-1, 1, 8, 8])
    assert list(meta.outputs[0].shape) == [-1, 10]
    assert list(grpc_client.get_model_metadata("tiny", "1").versions) == ["1", "2"]


def test_infer_equals_in_process_onnx_runtime(
    grpc_client: triton.InferenceServerClient, packages: Path
) -> None:
    x = _images(4)
    wanted = [triton.InferRequestedOutput("logits")]
    result = grpc_client.infer(
        "tiny", [_input(x)], outputs=wanted, request_id="r-1", parameters={"tag": "a"}
    )
    response = result.get_response()
    assert (response.id, response.model_name, response.model_version) == ("r-1", "tiny", "2")
    assert response.parameters["tag"].string_param == "a"
    assert result.as_numpy("logits").shape == (4, 10)
    _assert_close(result.as_numpy("logits"), reference(packages, "tiny", 2, x))
    # A specific version answers with its own model (v2 adds 1.0 to v1's logits).
    result = grpc_client.infer("tiny", [_input(x)], model_version="1")
    assert result.get_response().model_version == "1"
    _assert_close(result.as_numpy("logits"), reference(packages, "tiny", 1, x))


def test_typed_contents_in_and_out(grpc_server: Server, packages: Path) -> None:
    # tritonclient always sends raw bytes; its generated stub sends the typed fields.
    x = _images(2)
    request = service_pb2.ModelInferRequest(model_name="tiny", id="typed")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=x.shape)
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    with grpc.insecure_channel(_address(grpc_server)) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(request, timeout=30)
        assert response.id == "typed" and not response.raw_output_contents
        (output,) = response.outputs
        assert (output.datatype, list(output.shape)) == ("FP32", [2, 10])
        logits = np.asarray(output.contents.fp32_contents, np.float32).reshape(2, 10)
        _assert_close(logits, reference(packages, "tiny", 2, x))
        # Typed contents and raw bytes in one request: refused.
        request.raw_input_contents.append(x.tobytes())
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request, timeout=30)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "raw_input_contents" in caught.value.details()


@pytest.mark.parametrize("datatype", sorted(DATATYPES))
@pytest.mark.parametrize("raw", [True, False])
def test_every_datatype_round_trips_raw_and_typed(datatype: str, raw: bool) -> None:
    dtype = DATATYPES[datatype]
    x = (np.arange(6) % 2 == 1) if dtype == np.bool_ else np.arange(-2, 4)
    x = x.astype(dtype).reshape(2, 3)
    request = inference_pb2.ModelInferRequest(model_name="m", id="7")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=x.shape)
    if raw or datatype not in CONTENTS:  # FP16 has no typed field
        request.raw_input_contents.append(x.tobytes())
    else:
        getattr(tensor.contents, CONTENTS[datatype]).extend(x.ravel().tolist())
    decoded = decode_request(request, None)
    np.testing.assert_array_equal(decoded.inputs["x"], x)
    assert decoded.inputs["x"].dtype == dtype
    response = encode_response("m", 1, {"y": x}, decoded)
    (output,) = response.outputs
    assert (response.id, output.datatype, list(output.shape)) == ("7", datatype, [2, 3])
    if response.raw_output_contents:
        assert raw or datatype not in CONTENTS
        y = np.frombuffer(response.raw_output_contents[0], dtype)
    else:
        y = np.asarray(getattr(output.contents, CONTENTS[datatype]), dtype)
    np.testing.assert_array_equal(y.reshape(2, 3), x)


def test_concurrent_infers_share_batches(
    grpc_server: Server, grpc_client: triton.InferenceServerClient, packages: Path
) -> None:
    labels = {"model": "tiny", "version": "2"}
    before = httpx.get(f"{grpc_server.url}/metrics").text
    inputs = [_images(1) for _ in range(32)]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda x: grpc_client.infer("tiny", [_input(x)]), inputs))
    for x, result in zip(inputs, results, strict=True):
        np.testing.assert_allclose(
            result.as_numpy("logits"), reference(packages, "tiny", 2, x), atol=1e-5
        )
    after = httpx.get(f"{grpc_server.url}/metrics").text

    def delta(name: str, **more: str) -> float:
        return metric(after, name, **labels, **more) - metric(before, name, **labels, **more)

    assert delta("shipyard_requests_total", status="200") == 32
    assert delta("shipyard_batch_size_sum") == 32
    # 16 concurrent callers and tiny v2's 20 ms queue delay: batches of more than one form.
    assert delta("shipyard_batch_size_count") < 32


BAD_INPUTS = {
    "wrong datatype": ("tiny", "", lambda: [_input(_images(1).astype(np.float64), "FP64")],
                       None, "INVALID_ARGUMENT", "input 'x' has datatype FP64"),
    "wrong shape": ("tiny", "", lambda: [_input(np.zeros((1, 8, 8, 1), np.float32))],
                    None, "INVALID_ARGUMENT", "input 'x'"),
    "Inf where the model forbids it": ("tiny", "", lambda: [_input(_images(1) * np.inf)],
                                       None, "INVALID_ARGUMENT", "NaN or Inf"),
    "BYTES": ("tiny", "", lambda: [_input(np.array([[b"a"]], dtype=np.object_), "BYTES")],
              None, "INVALID_ARGUMENT", "BYTES"),
    "unknown input": ("tiny", "", lambda: [_input(_images(1), name="y")],
                      None, "INVALID_ARGUMENT",
                      "missing input(s) ['x'] and unknown input(s) ['y'] (rename 'y' to 'x'?)"),
    "batch above max_batch_size": ("tiny", "", lambda: [_input(_images(17))],
                                   None, "INVALID_ARGUMENT", "max_batch_size"),
    "unknown output": ("tiny", "", lambda: [_input(_images(1))],
                       [triton.InferRequestedOutput("probs")], "INVALID_ARGUMENT",
                       "unknown output 'probs'"),
    "classification": ("tiny", "", lambda: [_input(_images(1))],
                       [triton.InferRequestedOutput("logits", class_count=3)],
                       "INVALID_ARGUMENT", "classification"),
    "unknown model": ("nope", "", lambda: [_input(_images(1))],
                      None, "NOT_FOUND", "unknown model 'nope'"),
    "unknown version": ("tiny", "9", lambda: [_input(_images(1))],
                        None, "NOT_FOUND", "no version 9"),
    "non-numeric version": ("tiny", "latest", lambda: [_input(_images(1))],
                            None, "INVALID_ARGUMENT", "versions are positive integers"),
    "version not served": ("policy", "1", lambda: [_input(_images(1))],
                           None, "NOT_FOUND", "version 1"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_its_status_and_the_server_keeps_serving(
    grpc_client: triton.InferenceServerClient, case: str
) -> None:
    model, version, inputs, outputs, code, message = BAD_INPUTS[case]
    _fails(lambda: grpc_client.infer(model, inputs(), version, outputs), code, message)
    assert grpc_client.infer("tiny", [_input(_images(1))]).as_numpy("logits").shape == (1, 10)


def test_full_queue_is_unavailable_and_timeout_is_deadline_exceeded(
    grpc_client: triton.InferenceServerClient,
) -> None:
    # slow: ~20 ms per request, no batching, one instance, a queue of one request.
    x = np.zeros((1, 1, 8, 8), np.float32)

    def call(_: int) -> str:
        try:
            grpc_client.infer("slow", [_input(x)])
        except InferenceServerException as error:
            assert "queue full" in error.message(), error.message()
            return str(error.status())
        return "OK"

    with ThreadPoolExecutor(8) as pool:
        outcomes = set(pool.map(call, range(8)))
    assert outcomes == {"OK", "StatusCode.UNAVAILABLE"}, outcomes
    # tritonclient's `timeout` is in microseconds.
    _fails(
        lambda: grpc_client.infer("slow", [_input(x)], timeout=1000), "DEADLINE_EXCEEDED", "timeout"
    )
    assert grpc_client.infer("slow", [_input(x)]).as_numpy("logits").shape == (1, 10)


def test_load_and_unload(packages: Path, tmp_path: Path) -> None:
    add_version(packages, tmp_path, "tiny", 1)
    x = _images(2)
    with serving(tmp_path, grpc_port=0) as server:
        client = triton.InferenceServerClient(_address(server))
        index = client.get_model_repository_index()
        assert [(m.name, m.version, m.state) for m in index.models] == [("tiny", "1", "READY")]
        client.unload_model("tiny")
        assert not client.is_model_ready("tiny")
        assert client.get_model_repository_index().models[0].state == "UNAVAILABLE"
        _fails(lambda: client.infer("tiny", [_input(x)]), "UNAVAILABLE", "no ready version")
        with grpc.insecure_channel(_address(server)) as channel:  # as HTTP's Retry-After
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(service_pb2.ModelInferRequest(model_name="tiny"), timeout=30)
            assert ("retry-after", "1") in caught.value.trailing_metadata()
        client.load_model("tiny")
        assert client.is_model_ready("tiny")
        expected = reference(packages, "tiny", 1, x)
        _assert_close(client.infer("tiny", [_input(x)]).as_numpy("logits"), expected)
        _fails(lambda: client.load_model("nothing"), "NOT_FOUND", "nothing")
        _fails(lambda: client.load_model(".hidden"), "INVALID_ARGUMENT", "invalid model name")
        _fails(lambda: client.load_model("tiny", config="{}"), "INVALID_ARGUMENT", "override")
        _fails(lambda: client.unload_model("nothing"), "NOT_FOUND", "nothing")
        client.close()


def test_shutdown_lets_in_flight_calls_finish(packages: Path, tmp_path: Path) -> None:
    add_version(packages, tmp_path, "slow", 1, serving={"max_batch_size": 0})
    x = np.zeros((1, 1, 8, 8), np.float32)
    with serving(tmp_path, grpc_port=0) as server:
        client = triton.InferenceServerClient(_address(server))
        with ThreadPoolExecutor(8) as pool:
            calls = [pool.submit(client.infer, "slow", [_input(x)]) for _ in range(8)]
            in_flight: list[float] = []

            def arrived() -> bool:  # every call reached the server (~25 ms of work each)
                text = http.get("/metrics").text
                in_flight.append(metric(text, "shipyard_inflight_requests"))
                done = metric(text, "shipyard_requests_total", model="slow", status="200")
                return in_flight[-1] + done >= 8

            with httpx.Client(base_url=server.url) as http:
                wait_for(arrived, what="8 calls at the server")
            assert in_flight[-1] >= 1
            server.stop()
            shapes = [call.result(timeout=30).as_numpy("logits").shape for call in calls]
        assert shapes == [(1, 10)] * 8
        client.close()


def test_tokens_and_message_size(repository: Path) -> None:
    user = {"authorization": "Bearer infer-token"}
    admin = {"authorization": "Bearer admin-token"}
    options = {"auth_token": "infer-token", "admin_token": "admin-token", "max_body_bytes": 2048}
    with serving(repository, grpc_port=0, **options) as server:
        client = triton.InferenceServerClient(_address(server))
        assert client.is_server_live() and client.is_server_ready()  # probes stay open
        x = _images(1)
        for headers in (None, {"authorization": "Bearer wrong"}, admin):
            infer = functools.partial(client.infer, "tiny", [_input(x)], headers=headers)
            _fails(infer, "UNAUTHENTICATED", "bearer token")
        _fails(lambda: client.get_model_metadata("tiny"), "UNAUTHENTICATED", "token")
        assert client.get_model_metadata("tiny", headers=user).name == "tiny"
        assert client.infer("tiny", [_input(x)], headers=user).as_numpy("logits").shape == (1, 10)
        _fails(lambda: client.get_model_repository_index(headers=user), "UNAUTHENTICATED")
        assert client.get_model_repository_index(headers=admin).models
        # 16 images are 4 KiB: above max_body_bytes, refused before any decoding.
        big = [_input(_images(16))]
        _fails(lambda: client.infer("tiny", big, headers=user), "RESOURCE_EXHAUSTED", "2048")
        assert client.infer("tiny", [_input(x)], headers=user).as_numpy("logits").shape == (1, 10)
        client.close()


def test_a_busy_grpc_port_fails_startup_clearly(repository: Path) -> None:
    app = create_app(repository)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot serve gRPC on 127.0.0.1:{port}"):
            asyncio.run(start_grpc_server(app.server, "127.0.0.1", port))


def test_the_servicer_implements_every_rpc_of_the_service() -> None:
    """protoc's placeholder base class is stripped, so nothing may be left unimplemented."""
    import inspect

    from shipyard.serve.grpc import inference_pb2
    from shipyard.serve.grpc.server import InferenceService

    service = inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    rpcs = [method.name for method in service.methods]
    assert len(rpcs) == 10
    for name in rpcs:
        method = getattr(InferenceService, name, None)
        streams = name == "ModelStreamInfer"  # answers a stream: an async generator
        check = inspect.isasyncgenfunction if streams else inspect.iscoroutinefunction
        assert check(method), name
