"""The Open Inference Protocol v2 over gRPC: ``inference.GRPCInferenceService``.

``server`` serves it beside HTTP (``create_app(..., grpc_port=8001)``), ``codec`` converts
``ModelInferRequest``/``ModelInferResponse`` to and from numpy, ``inference.proto`` is the
service definition (field numbers as in KServe's and Triton's public protos) and
``inference_pb2*`` are generated from it by ``python -m shipyard.serve.grpc.generate``.
Importing this package is cheap; ``server`` and ``codec`` load grpcio and protobuf.
"""
