"""Regenerate ``inference_pb2.py``, ``inference_pb2.pyi`` and ``inference_pb2_grpc.py`` from
``inference.proto`` (a development tool; needs grpcio-tools, which bundles protoc)::

    .venv/bin/python -m shipyard.serve.grpc.generate

The generated modules are committed, so serving needs only grpcio and protobuf at run time.
One edit follows protoc: ``inference_pb2`` builds its descriptors in a private descriptor pool
instead of protobuf's default one. Its messages keep their public names (``inference.*``, as on
the wire), and so do tritonclient's and KServe's generated modules; in the default pool the two
sets clash ("duplicate symbol 'inference.ServerLiveRequest'"), which would forbid running the
server and one of those clients in one process (tests, benchmarks, embedding). This isolation
holds with protobuf's default upb backend; the pure-Python backend
(``PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python``) registers message classes globally anyway.
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[2]  # the folder that holds the `shipyard` package
PROTO = HERE / "inference.proto"
DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
PRIVATE_POOL = "_descriptor_pool.DescriptorPool().AddSerializedFile("


SERVICER_BASE = re.compile(
    r"\n\n\nclass GRPCInferenceServiceServicer\b.*?\n\n\n(?=def add_GRPCInferenceServiceServicer)",
    re.DOTALL,
)


def header(tool: str) -> str:
    return (
        f"# Generated from inference.proto by `python -m shipyard.serve.grpc.generate`\n"
        f"# ({tool}); do not edit: change the .proto and regenerate.\n"
    )


def main() -> int:
    from grpc_tools import protoc

    proto = PROTO.relative_to(SRC).as_posix()  # imports then read `from shipyard.serve.grpc`
    arguments = [
        "grpc_tools.protoc",
        f"-I{SRC}",
        f"--python_out={SRC}",
        f"--pyi_out={SRC}",
        f"--grpc_python_out={SRC}",
        proto,
    ]
    if protoc.main(arguments) != 0:
        print(f"protoc failed on {PROTO}", file=sys.stderr)
        return 1
    messages = HERE / "inference_pb2.py"
    text = messages.read_text()
    gencode = re.search(r"Protobuf Python Version: (\S+)", text)
    tool = f"grpcio-tools {version('grpcio-tools')}, protobuf gencode "
    tool += gencode[1] if gencode else "unknown"
    if text.count(DEFAULT_POOL) != 1:
        print(f"{messages}: expected one {DEFAULT_POOL!r}; protoc changed", file=sys.stderr)
        return 1
    text = text.replace(DEFAULT_POOL, PRIVATE_POOL)
    pool_note = "# Descriptors live in a private pool: see shipyard/serve/grpc/generate.py.\n"
    messages.write_text(header(tool) + pool_note + text)
    # protoc's servicer base class only holds placeholder methods that raise "not implemented";
    # server.InferenceService implements every RPC itself (a test checks it against the
    # service descriptor), and add_..._to_server needs no base class. Drop the dead code.
    services = HERE / "inference_pb2_grpc.py"
    text, found = SERVICER_BASE.subn("\n\n", services.read_text())
    if found != 1:
        print(f"{services}: expected one servicer base class; protoc changed", file=sys.stderr)
        return 1
    services.write_text(header(tool) + text)
    stubs = HERE / "inference_pb2.pyi"
    stubs.write_text(header(tool) + stubs.read_text())
    print(f"regenerated {', '.join(p.name for p in sorted(HERE.glob('inference_pb2*')))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
