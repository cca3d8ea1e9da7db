"""`se-onnx serve` options: every one has its documented default and its SE_ONNX_* environment variable."""

from __future__ import annotations

from pathlib import Path

import pytest
from service_helpers import serve

from se_onnx.cli import build_parser, main
from se_onnx.cli.serve import default_model_repository

ROOT = Path(__file__).resolve().parents[1]

# option → (default, a value from the environment, the parsed value)
OPTIONS = {
    "model_repository": (default_model_repository(), "/srv/models", "/srv/models"),
    "host": ("0.0.0.0", "127.0.0.1", "127.0.0.1"),
    "port": (8000, "9000", 9000),
    "provider": ("auto", "cpu", "cpu"),
    "allow_cpu_fallback": (False, "1", True),
    "device_id": (0, "2", 2),
    "intra_op_threads": (0, "3", 3),
    "inter_op_threads": (0, "1", 1),
    "max_request_size": (64 * 1024 * 1024, "1024", 1024),
    "request_timeout": (60.0, "2.5", 2.5),
    "api_key": (None, "secret", "secret"),
    "api_key_file": (None, "/run/secrets/key", "/run/secrets/key"),
    "api_key_scope": ("repository", "all", "all"),
    "ssl_certfile": (None, "/tls/cert.pem", "/tls/cert.pem"),
    "ssl_keyfile": (None, "/tls/key.pem", "/tls/key.pem"),
    "ssl_ca_certs": (None, "/tls/ca.pem", "/tls/ca.pem"),
    "log_level": ("info", "debug", "debug"),
    "workers_per_model": (1, "4", 4),
}


def test_defaults():
    args = build_parser().parse_args(["serve"])
    assert {name: getattr(args, name) for name in OPTIONS} == {name: spec[0] for name, spec in OPTIONS.items()}


@pytest.mark.parametrize("name", OPTIONS)
def test_environment_variable_sets_the_default(monkeypatch, name):
    monkeypatch.setenv(f"SE_ONNX_{name.upper()}", OPTIONS[name][1])
    assert getattr(build_parser().parse_args(["serve"]), name) == OPTIONS[name][2]


def test_command_line_wins_over_environment(monkeypatch):
    monkeypatch.setenv("SE_ONNX_PORT", "9000")
    assert build_parser().parse_args(["serve", "--port", "8123"]).port == 8123


def test_bundled_models_are_the_default_repository_and_all_load():
    assert Path(default_model_repository()) == ROOT / "models"
    with serve(ROOT / "models") as client:
        index = {row["name"]: row for row in client.app.state.data_plane.repository.index()}
        assert {"resnet_tiny", "tiny_conv", "mobilenet_se_tiny"} <= set(index)
        assert "build_samples" not in index
        assert all(row["state"] == "READY" for row in index.values()), index


@pytest.mark.parametrize(
    "argv, env, message",
    [
        (["serve", "--model-repository", "/no/such/dir"], {}, "/no/such/dir: model repository is not a directory"),
        (["serve"], {"SE_ONNX_PROVIDER": "gpu"}, "--provider must be auto, cpu, cuda or tensorrt, not 'gpu'"),
        (["serve"], {"SE_ONNX_LOG_LEVEL": "loud"}, "--log-level must be"),
        (["serve"], {"SE_ONNX_WORKERS_PER_MODEL": "0"}, "--workers-per-model and --max-request-size must be at least 1"),
        (["serve", "--api-key-scope", "all"], {}, "--api-key-scope all needs an API key"),
        (["serve", "--api-key-file", "/no/such/key"], {}, "/no/such/key: cannot read the API key file (No such file or directory)"),
        (["serve", "--api-key-file", "{empty}"], {}, "the API key file is empty"),
        (["serve", "--api-key-file", "{empty}"], {"SE_ONNX_API_KEY": "k"}, "give the API key once"),
        (["serve", "--ssl-keyfile", "{empty}"], {}, "--ssl-keyfile and --ssl-ca-certs need --ssl-certfile"),
        (["serve", "--ssl-certfile", "/no/cert.pem"], {}, "/no/cert.pem: --ssl-certfile is not a readable file"),
    ],
)
def test_bad_settings_fail_before_serving(monkeypatch, capsys, tmp_path, argv, env, message):
    (tmp_path / "empty").write_text("\n")
    argv = [arg.replace("{empty}", str(tmp_path / "empty")) for arg in argv]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("se-onnx: error: ") and message in error
