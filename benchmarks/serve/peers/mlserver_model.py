"""MLServer custom runtime: the shared model.onnx on ONNX Runtime (1 thread).

MLServer decodes the V2 request itself (NumpyCodec) and, with adaptive batching on, hands
``predict`` the requests concatenated along the batch axis and splits the response again.
"""

from __future__ import annotations

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from v2 import open_session


class OnnxModel(MLModel):
    async def load(self) -> bool:
        self._session = open_session(self.settings.parameters.uri)
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        values = self._session.run(self._outputs, feeds)
        return InferenceResponse(
            model_name=self.name,
            id=payload.id,
            outputs=[
                NumpyCodec.encode_output(name, value)
                for name, value in zip(self._outputs, values, strict=True)
            ],
        )
