"""`se-onnx serve` and the server's settings: one ServerSettings model holds every default, reads the
SE_ONNX_* environment variables and checks every value; the command's options derive from it, and
the command line and the Python API refuse the same values with the same message."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import get_args

import httpx
import pytest
from pydantic import ValidationError
from service_helpers import relu_neg_model, serve, server_log, start_server, stop_server, write_repo

from se_onnx.cli import build_parser, main
from se_onnx.cli.serve import option, settings_from
from service.app import create_app
from service.config import ServerSettings, env_name

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """No SE_ONNX_* variable of the shell that runs the tests reaches the settings."""
    for name in [name for name in os.environ if name.upper().startswith("SE_ONNX_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    (tmp_path / "repo").mkdir()
    (tmp_path / "key").write_text("from-file\nignored\n")
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "cert").write_text("not checked here: TLS tests use real ones\n")
    return {name: tmp_path / name for name in ("repo", "key", "empty", "cert")}


def _fill(value, files: dict[str, Path]):
    """`value` with {name} replaced by the path of that file of `files`."""
    return value.format(**{key: str(path) for key, path in files.items()}) if isinstance(value, str) else value


def _serve_actions() -> dict[str, argparse.Action]:
    (subparsers,) = [a for a in build_parser(["serve"])._actions if a.dest == "command"]
    return {a.dest: a for a in subparsers.choices["serve"]._actions if a.dest != "help"}


def test_every_option_is_a_settings_field_with_its_default_choices_and_variable():
    actions = _serve_actions()
    assert list(actions) == list(ServerSettings.model_fields)
    for name, field in ServerSettings.model_fields.items():
        action = actions[name]
        assert field.description, f"{name} has no description"
        assert action.option_strings[0] == option(name) == "--" + name.replace("_", "-")
        # The settings hold the default: an option not given leaves nothing in the namespace.
        assert action.default is argparse.SUPPRESS
        assert f"[env {env_name(name)}]" in action.help and env_name(name) == f"SE_ONNX_{name.upper()}"
        assert field.description in action.help
        if field.default is not None:
            assert f"(default {field.default})" in action.help
        choices = get_args(field.annotation)
        if field.annotation is not bool and all(isinstance(choice, str) for choice in choices) and choices:
            assert action.metavar == "{" + ",".join(choices) + "}"
    assert get_args(ServerSettings.model_fields["provider"].annotation) == ("auto", "cpu", "cuda", "tensorrt")


def test_defaults_come_from_the_settings(files):
    parsed = build_parser().parse_args(["serve", "--model-repository", str(files["repo"])])
    assert settings_from(parsed) == ServerSettings(model_repository=files["repo"])
    defaults = ServerSettings(model_repository=files["repo"])
    wanted = (8000, 8001, "auto", "repository")
    assert (defaults.port, defaults.grpc_port, defaults.provider, defaults.api_key_scope) == wanted


# field → (its variable's value, the setting it gives); {name} is a file of the `files` fixture.
ENVIRONMENT = {
    "model_repository": ("{repo}", "{repo}"),
    "host": ("127.0.0.1", "127.0.0.1"),
    "port": ("9000", 9000),
    "grpc_port": ("9001", 9001),
    "provider": ("cpu", "cpu"),
    "allow_cpu_fallback": ("1", True),
    "device_id": ("2", 2),
    "intra_op_threads": ("3", 3),
    "inter_op_threads": ("1", 1),
    "max_request_size": ("1024", 1024),
    "request_timeout": ("2.5", 2.5),
    "workers_per_model": ("4", 4),
    "max_inflight_bytes": ("999999999", 999999999),
    "grpc_stream_inflight": ("8", 8),
    "grpc_max_concurrent_streams": ("16", 16),
    "grpc_max_concurrent_rpcs": ("64", 64),
    "http_header_timeout": ("2.5", 2.5),
    "http_body_timeout": ("7.5", 7.5),
    "http_min_upload_rate": ("4096", 4096),
    "log_level": ("debug", "debug"),
    "trace": ("true", True),
    "api_key": ("secret", "secret"),
    "api_key_file": ("{key}", "{key}"),
    "api_key_scope": ("all", "all"),
    "ssl_certfile": ("{cert}", "{cert}"),
    "ssl_keyfile": ("{cert}", "{cert}"),
    "ssl_ca_certs": ("{cert}", "{cert}"),
    "model_load_timeout": ("30", 30.0),
}
# What some settings need beside them to be valid.
NEEDS = {"api_key_scope": {"SE_ONNX_API_KEY": "k"}, "ssl_keyfile": {"SE_ONNX_SSL_CERTFILE": "{cert}"},
         "ssl_ca_certs": {"SE_ONNX_SSL_CERTFILE": "{cert}"}}  # fmt: skip


def test_every_field_has_a_case_here():
    assert list(ENVIRONMENT) == list(ServerSettings.model_fields)


@pytest.mark.parametrize("name", ENVIRONMENT)
def test_environment_variable_sets_the_setting_for_the_api_and_the_command_line(monkeypatch, files, name):
    monkeypatch.setenv("SE_ONNX_MODEL_REPOSITORY", str(files["repo"]))
    for variable, value in {env_name(name): ENVIRONMENT[name][0], **NEEDS.get(name, {})}.items():
        monkeypatch.setenv(variable, _fill(value, files))
    wanted = ENVIRONMENT[name][1]
    expected = Path(_fill(wanted, files)) if str(wanted).startswith("{") else wanted
    for settings in (ServerSettings(), settings_from(build_parser().parse_args(["serve"]))):
        assert getattr(settings, name) == expected
    if name == "api_key_file":  # the file's first line becomes the key
        assert ServerSettings().api_key == "from-file"


def test_command_line_wins_over_environment(monkeypatch, files):
    monkeypatch.setenv("SE_ONNX_MODEL_REPOSITORY", str(files["repo"]))
    monkeypatch.setenv("SE_ONNX_PORT", "9000")
    monkeypatch.setenv("SE_ONNX_ALLOW_CPU_FALLBACK", "1")
    settings = settings_from(build_parser().parse_args(["serve", "--port", "8123", "--no-allow-cpu-fallback"]))
    assert (settings.port, settings.allow_cpu_fallback) == (8123, False)


def test_the_api_key_is_not_shown(files):
    settings = ServerSettings(model_repository=files["repo"], api_key="s3cret")
    assert "s3cret" not in repr(settings)
    with pytest.raises(ValidationError) as refused:  # a check across settings shows no input either
        ServerSettings(model_repository=files["repo"], api_key="s3cret", port=8001)
    assert "s3cret" not in str(refused.value)


def test_bundled_models_all_load():
    with serve(ROOT / "models") as client:
        index = {row["name"]: row for row in client.app.state.data_plane.repository.index()}
        assert {"resnet_tiny", "tiny_conv", "mobilenet_se_tiny"} <= set(index)
        assert "build_samples" not in index
        assert all(row["state"] == "READY" for row in index.values()), index


# (settings, the same on the command line, environment, part of the message). Paths: files of `files`.
INVALID = [
    ({"model_repository": "/no/such/dir"}, ["--model-repository", "/no/such/dir"], {},
     "/no/such/dir: model repository is not a directory"),
    ({"provider": "gpu"}, ["--provider", "gpu"], {}, "Input should be 'auto', 'cpu', 'cuda' or 'tensorrt'"),
    ({"log_level": "loud"}, [], {"SE_ONNX_LOG_LEVEL": "loud"},
     "Input should be 'debug', 'info', 'warning', 'error' or 'critical'"),
    ({"workers_per_model": 0}, [], {"SE_ONNX_WORKERS_PER_MODEL": "0"}, "greater than or equal to 1"),
    ({"max_request_size": 0}, ["--max-request-size", "0"], {}, "greater than or equal to 1"),
    ({"port": "http"}, ["--port", "http"], {}, "Input should be a valid integer"),
    ({"max_inflight_bytes": 1024}, ["--max-inflight-bytes", "1024"], {},
     "--max-inflight-bytes (1024) is below --max-request-size"),
    ({"http_header_timeout": 0}, ["--http-header-timeout", "0"], {}, "greater than 0"),
    ({"grpc_port": 70000}, ["--grpc-port", "70000"], {}, "less than or equal to 65535"),
    ({"port": 8001}, ["--port", "8001"], {}, "--grpc-port and --port are both 8001; give gRPC a port of its own"),
    ({"request_timeout": -1}, ["--request-timeout", "-1"], {}, "greater than or equal to 0"),
    ({"device_id": -1}, ["--device-id=-1"], {}, "greater than or equal to 0"),
    ({"api_key_scope": "all"}, ["--api-key-scope", "all"], {}, "--api-key-scope all needs an API key"),
    ({"api_key_scope": "some"}, ["--api-key-scope", "some"], {}, "Input should be 'repository' or 'all'"),
    ({"api_key_file": "/no/such/key"}, ["--api-key-file", "/no/such/key"], {},
     "/no/such/key: cannot read the API key file (No such file or directory)"),
    ({"api_key_file": "{empty}"}, ["--api-key-file", "{empty}"], {}, "the API key file is empty"),
    ({"api_key_file": "{empty}", "api_key": "k"}, ["--api-key-file", "{empty}"], {"SE_ONNX_API_KEY": "k"},
     "give the API key once"),
    ({"ssl_keyfile": "{cert}"}, ["--ssl-keyfile", "{cert}"], {},
     "--ssl-keyfile and --ssl-ca-certs need --ssl-certfile"),
    ({"ssl_certfile": "/no/cert.pem"}, ["--ssl-certfile", "/no/cert.pem"], {}, "/no/cert.pem: not a readable file"),
]  # fmt: skip


@pytest.mark.parametrize("settings, argv, env, message", INVALID, ids=[str(case[0]) for case in INVALID])
def test_invalid_settings_are_refused_alike_by_the_api_and_the_command_line(
    monkeypatch, capsys, files, settings, argv, env, message
):
    given = {name: _fill(value, files) for name, value in settings.items()}
    with pytest.raises(ValidationError) as refused:
        create_app(ServerSettings(**{"model_repository": files["repo"], **given}))
    (error,) = refused.value.errors()
    reason = error["msg"].removeprefix("Value error, ")
    assert message in reason
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    repository = [] if "model_repository" in settings else ["--model-repository", str(files["repo"])]
    assert main(["serve", *repository, *[_fill(arg, files) for arg in argv]]) == 2
    printed = capsys.readouterr().err
    assert printed.startswith("se-onnx: error: ") and printed.count("\n") == 1 and reason in printed, printed
    if error["loc"]:  # a field's error names its option and variable
        name = error["loc"][0]
        assert f"{option(name)} ({env_name(name)}): " in printed


def test_without_a_repository_the_working_directorys_models_are_served(tmp_path):
    write_repo(tmp_path / "models", {"mine": relu_neg_model()})
    process, url = start_server(None, cwd=tmp_path)
    try:
        assert httpx.get(f"http://{url}/v2/models/mine/ready").status_code == 200
        assert str(tmp_path / "models") in server_log(process)
        assert [line for line in server_log(process).splitlines() if "serving model repository" in line]
    finally:
        assert stop_server(process) == 0


def test_without_a_repository_or_models_here_the_error_names_the_option(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert main(["serve"]) == 2
    printed = capsys.readouterr().err
    where = f"--model-repository (SE_ONNX_MODEL_REPOSITORY): {tmp_path / 'models'}"
    assert printed == f"se-onnx: error: {where}: model repository is not a directory\n"


def test_a_taken_http_port_stops_the_server_at_start_up(files):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [sys.executable, "-m", "se_onnx", "serve", "--host", "127.0.0.1", "--port", str(port),
                   "--grpc-port", "0", "--model-repository", str(files["repo"])]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        failed = subprocess.run(command, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2, failed.stderr
    assert failed.stderr.startswith(f"se-onnx: error: cannot listen for HTTP on 127.0.0.1:{port}: ")
    assert failed.stderr.count("\n") == 1 and "Traceback" not in failed.stderr, failed.stderr
