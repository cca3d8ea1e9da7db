"""Provider resolution for the server: 'auto', explicit GPU providers, the CPU fallback and per-model providers."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from service_helpers import infer_json, relu_neg_model, serve, write_repo

from se_onnx.errors import SeOnnxError
from se_onnx.runtime.sessions import make_session, ort_providers, resolve_provider

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def test_cpu_and_auto():
    assert ort_providers("cpu") == ["CPUExecutionProvider"]
    assert resolve_provider("cpu") == "cpu"
    assert resolve_provider("auto") == ("cuda" if HAS_CUDA else "cpu")
    with pytest.raises(SeOnnxError, match="unknown provider 'tpu'"):
        resolve_provider("tpu")


@pytest.mark.skipif(HAS_CUDA, reason="CUDA is available here")
def test_missing_cuda_fails_unless_fallback_is_allowed():
    with pytest.raises(SeOnnxError, match="cuda provider .* not available"):
        resolve_provider("cuda")
    assert resolve_provider("cuda", allow_cpu_fallback=True) == "cpu"
    with pytest.raises(SeOnnxError, match="not available"):
        make_session(relu_neg_model().SerializeToString(), "cuda")


def test_thread_options_reach_the_session():
    session = make_session(relu_neg_model().SerializeToString(), "cpu", intra_op_threads=1, inter_op_threads=1)
    assert session.get_session_options().intra_op_num_threads == 1
    assert session.get_session_options().inter_op_num_threads == 1


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs the CUDA execution provider")
def test_cuda_provider_options_and_per_model_provider(tmp_path):
    chain = ort_providers("cuda", device_id=0, gpu_mem_limit=2**30)
    assert chain == [("CUDAExecutionProvider", {"device_id": "0", "gpu_mem_limit": str(2**30)}), "CPUExecutionProvider"]
    root = write_repo(
        tmp_path / "repo",
        {"gpu": (relu_neg_model(), {"provider": "cuda", "gpu_mem_limit": 2**30}, [1]), "cpu": relu_neg_model()},
    )
    with serve(root) as client:  # the server's own provider is the CPU
        assert client.get("/v2/models/gpu").json()["parameters"]["providers"][0] == "CUDAExecutionProvider"
        assert client.get("/v2/models/cpu").json()["parameters"]["providers"] == ["CPUExecutionProvider"]
        assert client.get("/v2/models/gpu/config").json()["instance_group"][0]["kind"] == "KIND_GPU"
        x = np.array([[1, -2, 3, -4]], np.float32)
        outputs = client.post("/v2/models/gpu/infer", json=infer_json("x", x)).json()["outputs"]
        assert outputs[0]["data"] == np.maximum(x, 0).reshape(-1).tolist()
