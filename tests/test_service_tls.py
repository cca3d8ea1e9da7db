"""HTTPS with the server's own certificate, and mutual TLS with --ssl-ca-certs, on the real
server process; certificates from a throwaway CA made in the test."""

from __future__ import annotations

import ssl

import httpx
import pytest
import trustme
from service_helpers import relu_neg_model, start_server, stop_server, write_repo


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    authority = trustme.CA()
    authority.cert_pem.write_to_path(folder / "ca.pem")
    server = authority.issue_cert("127.0.0.1")
    server.cert_chain_pems[0].write_to_path(folder / "server.pem")
    server.private_key_pem.write_to_path(folder / "server.key")
    authority.issue_cert("client@example.com").private_key_and_cert_chain_pem.write_to_path(folder / "client.pem")
    return folder


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return write_repo(tmp_path_factory.mktemp("repo"), {"relu": relu_neg_model()})


def _context(pki, client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if client_cert:
        context.load_cert_chain(str(pki / "client.pem"))
    return context


def test_https_with_the_servers_certificate(pki, repo):
    tls = ["--ssl-certfile", str(pki / "server.pem"), "--ssl-keyfile", str(pki / "server.key")]
    process, url = start_server(repo, *tls, scheme="https", verify=_context(pki))
    try:
        with httpx.Client(verify=_context(pki)) as client:
            assert client.get(f"https://{url}/v2/models/relu").json()["name"] == "relu"
        with pytest.raises(httpx.ConnectError):  # an unknown CA: the client refuses the server
            httpx.get(f"https://{url}/v2/health/ready")
        with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port
            httpx.get(f"http://{url}/v2/health/ready").raise_for_status()
    finally:
        assert stop_server(process) == 0


def test_client_certificates_required_with_a_ca(pki, repo):
    tls = [
        "--ssl-certfile",
        str(pki / "server.pem"),
        "--ssl-keyfile",
        str(pki / "server.key"),
        "--ssl-ca-certs",
        str(pki / "ca.pem"),
    ]
    process, url = start_server(repo, *tls, scheme="https", verify=_context(pki, client_cert=True))
    try:
        with pytest.raises(httpx.HTTPError), httpx.Client(verify=_context(pki)) as client:
            client.get(f"https://{url}/v2/health/ready").raise_for_status()
        with httpx.Client(verify=_context(pki, client_cert=True)) as client:
            assert client.get(f"https://{url}/v2/health/ready").status_code == 200
    finally:
        assert stop_server(process) == 0


def test_grpc_over_tls_and_the_key_scope(pki, repo):
    """gRPC takes the same certificate, and --api-key-scope all asks it for the key too."""
    import numpy as np
    import tritonclient.grpc as triton_grpc
    from service_helpers import free_port
    from tritonclient.utils import InferenceServerException

    grpc_port = free_port()
    tls = ["--ssl-certfile", str(pki / "server.pem"), "--ssl-keyfile", str(pki / "server.key")]
    process, _ = start_server(
        repo,
        *tls,
        grpc_port=grpc_port,
        env={"SE_ONNX_API_KEY": "k", "SE_ONNX_API_KEY_SCOPE": "all"},
        scheme="https",
        verify=_context(pki),
    )
    try:
        client = triton_grpc.InferenceServerClient(
            f"127.0.0.1:{grpc_port}", ssl=True, root_certificates=str(pki / "ca.pem")
        )
        assert client.is_server_ready()  # health needs no key
        x = triton_grpc.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.ones((1, 4), np.float32))
        with pytest.raises(InferenceServerException) as refused:
            client.infer("relu", [x])
        assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
        assert client.infer("relu", [x], headers={"x-api-key": "k"}).as_numpy("relu").tolist() == [[1.0] * 4]
    finally:
        assert stop_server(process) == 0
