"""Inference checks against a running se-onnx container, for deploy/docker/smoke.sh.

    python deploy/docker/smoke_infer.py HTTP_HOST:PORT GRPC_HOST:PORT

Every sample model in models/ must be ready; tiny_conv answers the same batch over HTTP with JSON
tensors, over HTTP with binary tensors, and over gRPC, each equal to ONNX Runtime run here on the
same file. Prints one line per check; exits non-zero with the failing check's line.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http

MODELS = Path(__file__).resolve().parents[2] / "models"
MODEL = "tiny_conv"


def main(http_url: str, grpc_url: str) -> None:
    http = triton_http.InferenceServerClient(http_url, network_timeout=30.0)
    grpc = triton_grpc.InferenceServerClient(grpc_url)
    expected_models = sorted(p.stem for p in MODELS.glob("*.onnx"))
    # Model by model: the repository index is an admin API, off unless an API key is set.
    not_ready = [name for name in expected_models if not http.is_model_ready(name)]
    assert not not_ready, f"models not ready over HTTP: {not_ready}"
    print(f"smoke: models ready over HTTP: {', '.join(expected_models)}")

    session = ort.InferenceSession(str(MODELS / f"{MODEL}.onnx"), providers=["CPUExecutionProvider"])
    (meta,) = session.get_inputs()
    batch = np.random.default_rng(0).standard_normal([2, *meta.shape[1:]]).astype(np.float32)
    (reference,) = session.run(None, {meta.name: batch})
    (output,) = session.get_outputs()

    for binary in (False, True):
        tensor = triton_http.InferInput(meta.name, list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch, binary_data=binary)
        wanted = triton_http.InferRequestedOutput(output.name, binary_data=binary)
        answer = http.infer(MODEL, [tensor], outputs=[wanted]).as_numpy(output.name)
        np.testing.assert_allclose(answer, reference, rtol=1e-4, atol=1e-5)
        print(f"smoke: HTTP inference ({'binary' if binary else 'JSON'} tensors) matches ONNX Runtime")

    assert grpc.is_server_ready() and grpc.is_model_ready(MODEL), "gRPC: server or model not ready"
    tensor = triton_grpc.InferInput(meta.name, list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    answer = grpc.infer(MODEL, [tensor], client_timeout=30.0).as_numpy(output.name)
    np.testing.assert_allclose(answer, reference, rtol=1e-4, atol=1e-5)
    print("smoke: gRPC inference matches ONNX Runtime")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    try:
        main(sys.argv[1], sys.argv[2])
    except Exception as error:  # one clear line for the smoke log, whatever failed
        sys.exit(f"smoke: FAIL: inference check: {type(error).__name__}: {error}".splitlines()[0])
