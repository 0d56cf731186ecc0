"""MLServer custom runtime for encoded images: base64 BYTES in, the model's logits out.

As a user would write it for MLServer: the request's BYTES input (``content_type: base64``)
is decoded by MLServer's Base64Codec, each image decoded and pre-processed with Pillow
(resize the shorter side to 256, bilinear; centre crop 224; (x/255 - mean) / std; NCHW), then
the batch runs on ONNX Runtime (1 thread). The settings are EfficientNet-Lite0's, those of the
package the benchmark builds.
"""

from __future__ import annotations

import io

import numpy as np
from mlserver import MLModel
from mlserver.codecs import Base64Codec, NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from PIL import Image
from v2 import open_session

MEAN, STD, RESIZE, CROP = 127 / 255, 128 / 255, 256, 224


def preprocess(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    scale = RESIZE / min(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BILINEAR)
    left, top = (image.width - CROP) // 2, (image.height - CROP) // 2
    image = image.crop((left, top, left + CROP, top + CROP))
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    return ((pixels - MEAN) / STD).transpose(2, 0, 1)


class ImageModel(MLModel):
    async def load(self) -> bool:
        self._session = open_session(self.settings.parameters.uri)
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        images = Base64Codec.decode_input(payload.inputs[0])
        batch = np.stack([preprocess(image) for image in images])
        values = self._session.run(self._outputs, {self._input: batch})
        return InferenceResponse(
            model_name=self.name,
            id=payload.id,
            outputs=[
                NumpyCodec.encode_output(name, value)
                for name, value in zip(self._outputs, values, strict=True)
            ],
        )
