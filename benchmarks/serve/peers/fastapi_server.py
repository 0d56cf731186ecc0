"""The loop a user writes in ten minutes: FastAPI + ONNX Runtime, no batching, V2 JSON.

Usage: python fastapi_server.py MODEL.onnx NAME PORT MAX_BATCH TIMEOUT_S (the last two are
ignored: this peer runs each request alone, as sent). One ORT session, 1 thread; the handler
is ``async`` and runs the model on the event loop, as most such loops do.
"""

from __future__ import annotations

import sys

import uvicorn
from fastapi import FastAPI, Request
from v2 import decode, encode, open_session


def main() -> None:
    path, name, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    session = open_session(path)
    outputs = [o.name for o in session.get_outputs()]
    app = FastAPI()

    @app.post(f"/v2/models/{name}/infer")
    async def infer(request: Request) -> dict:
        feeds = decode(await request.json())
        return encode(name, dict(zip(outputs, session.run(outputs, feeds), strict=True)))

    @app.get("/v2/health/ready")
    async def ready() -> dict:
        return {"ready": True}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
