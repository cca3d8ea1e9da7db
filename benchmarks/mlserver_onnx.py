"""An MLServer runtime that serves an ONNX model with ONNX Runtime, for `bench_service.py --mlserver`.

MLServer 1.7 ships no ONNX runtime; this is the custom `MLModel` its documentation describes.
It is imported only by the MLServer process (its own virtual environment), never by se-onnx.
"""

from __future__ import annotations

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxModel(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        extra = (self.settings.parameters.extra if self.settings.parameters else None) or {}
        options.intra_op_num_threads = int(extra.get("intra_op_threads", 0))
        path = await get_model_uri(self.settings)
        self._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self._inputs = [tensor.name for tensor in self._session.get_inputs()]
        self._outputs = [tensor.name for tensor in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {tensor.name: NumpyCodec.decode_input(tensor) for tensor in payload.inputs}
        results = self._session.run(None, {name: feeds[name] for name in self._inputs})
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output(name, array) for name, array in zip(self._outputs, results)],
        )
