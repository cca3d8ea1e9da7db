"""Triton's config.pbtxt: read with Triton's own ModelConfig message and mapped onto ModelConfig.

The text is parsed by protobuf's text format into `tritonclient.grpc.model_config_pb2.ModelConfig`,
so a config Triton accepts parses the same here; the fields se-onnx acts on become ModelConfig's,
whose validation (Triton's ranges, se-onnx's bounds) then applies. Each field se-onnx ignores, and
each accelerator or warm-up detail it cannot honour, is one warning line at load.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from google.protobuf.message import Message
from tritonclient.grpc import model_config_pb2 as mc

from se_onnx.errors import SeOnnxError
from service.config import ModelConfig

PBTXT_FILE = "config.pbtxt"
log = logging.getLogger("service.repository")

# The fields se-onnx acts on, as dotted paths (a repeated field's entries share its path); every
# other field a config.pbtxt sets is ignored with a warning naming it.
_HONOURED = frozenset(
    {
        "name",
        "platform",
        "backend",
        "default_model_filename",
        "max_batch_size",
        "version_policy",
        *(f"{kind}.{field}" for kind in ("input", "output") for field in ("name", "data_type", "dims", "reshape")),
        "dynamic_batching.preferred_batch_size",
        "dynamic_batching.max_queue_delay_microseconds",
        "dynamic_batching.default_queue_policy.max_queue_size",
        "instance_group.count",
        "instance_group.kind",
        "instance_group.gpus",
        "optimization.execution_accelerators",
        "model_warmup",
        "parameters",
    }
)
_KIND = mc.ModelInstanceGroup.Kind
# The provider of each instance kind; KIND_AUTO and KIND_MODEL leave it to the server's --provider.
_PROVIDER_OF_KIND = {_KIND.KIND_CPU: "cpu", _KIND.KIND_GPU: "cuda"}
# Accelerators that are ONNX Runtime providers se-onnx runs.
_GPU_ACCELERATORS = {"tensorrt": "tensorrt", "cuda": "cuda"}


def read_pbtxt(path: Path, model: str) -> ModelConfig:
    """The model's config.pbtxt as a ModelConfig; SeOnnxError with the reason for a file that cannot
    be read, a syntax error, or a value out of range or not served."""
    try:
        text = path.read_bytes()
    except OSError as error:
        raise SeOnnxError(f"{path}: cannot read model config: {error.strerror}") from None
    message = mc.ModelConfig()
    try:
        text_format.Parse(text, message)
    except (text_format.ParseError, UnicodeDecodeError) as error:
        raise SeOnnxError(f"{path}: invalid model config: {' '.join(str(error).split())}") from None
    ignored = list(dict.fromkeys(_ignored(message)))
    if ignored:
        log.warning("config.pbtxt fields ignored", extra={"model": model, "fields": ignored})
    return ModelConfig.validated(_fields(message, str(path), model), str(path))


def _ignored(message: Message, prefix: str = "") -> Iterator[str]:
    """The dotted path of every field set in `message` that se-onnx does not act on."""
    for field, value in message.ListFields():
        path = prefix + field.name
        if path in _HONOURED:
            continue
        is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
        if field.message_type is not None and not is_map and any(h.startswith(path + ".") for h in _HONOURED):
            for item in value if field.is_repeated else [value]:
                yield from _ignored(item, path + ".")
        else:
            yield path


def _fields(message: mc.ModelConfig, source: str, model: str) -> dict[str, Any]:
    """ModelConfig's fields for what `message` sets; proto3 leaves unset fields at zero, which
    stand for ModelConfig's defaults here."""
    fields: dict[str, Any] = {"max_batch_size": message.max_batch_size, "input": [], "output": []}
    for name in ("name", "platform", "backend", "default_model_filename"):
        if getattr(message, name):
            fields[name] = getattr(message, name)
    for kind in ("input", "output"):
        for tensor in getattr(message, kind):
            entry: dict[str, Any] = {"name": tensor.name, "dims": list(tensor.dims)}
            if tensor.data_type != mc.TYPE_INVALID:  # unset: ModelConfig reports the missing type
                entry["data_type"] = mc.DataType.Name(tensor.data_type)
            if tensor.HasField("reshape"):
                entry["reshape"] = {"shape": list(tensor.reshape.shape)}
            fields[kind].append(entry)
    if message.HasField("version_policy"):
        fields["version_policy"] = _version_policy(message.version_policy)
    if message.HasField("dynamic_batching"):
        batching = message.dynamic_batching
        fields["dynamic_batching"] = {
            "max_queue_delay_us": batching.max_queue_delay_microseconds,
            "preferred_batch_size": list(batching.preferred_batch_size),
        }
        if batching.default_queue_policy.max_queue_size:  # 0, Triton's unbounded queue: se-onnx's default bound
            fields["dynamic_batching"]["max_queue_size"] = batching.default_queue_policy.max_queue_size
    fields.update(_instances(message, source, model))
    if message.model_warmup:
        fields["model_warmup"] = _warmup(message.model_warmup, model)
        fields["warmup"] = sum(sample["count"] for sample in fields["model_warmup"])
    fields["parameters"] = {key: value.string_value for key, value in message.parameters.items()}
    return fields


def _version_policy(policy: mc.ModelVersionPolicy) -> dict[str, Any]:
    chosen = policy.WhichOneof("policy_choice")
    if chosen == "all":
        return {"all": {}}
    if chosen == "specific":
        return {"specific": {"versions": list(policy.specific.versions)}}
    # `latest {}` leaves num_versions at 0, which Triton reads as its default of one version.
    return {"latest": {"num_versions": policy.latest.num_versions or 1}}


def _instances(message: mc.ModelConfig, source: str, model: str) -> dict[str, Any]:
    """instance_count, provider and device_id from instance_group and the execution accelerators.
    se-onnx runs a model version on one device: groups of one kind add up their counts, groups of
    different kinds are refused, and the instances of several GPUs all run on the first."""
    fields: dict[str, Any] = {}
    groups = list(message.instance_group)
    kinds = sorted({group.kind for group in groups})
    if len(kinds) > 1:
        names = " and ".join(_KIND.Name(kind) for kind in kinds)
        raise SeOnnxError(
            f"{source}: invalid model config: instance_group mixes {names}; se-onnx runs a model version on one "
            "device, so keep groups of one kind"
        )
    kind = kinds[0] if kinds else _KIND.KIND_AUTO
    if groups:
        # A count of 0 is unset in proto3: Triton's default of one instance.
        fields["instance_count"] = sum(group.count or 1 for group in groups)
    if kind in _PROVIDER_OF_KIND:
        fields["provider"] = _PROVIDER_OF_KIND[kind]
    gpus = list(dict.fromkeys(gpu for group in groups for gpu in group.gpus))
    unhonoured = []
    if gpus and kind != _KIND.KIND_CPU:
        fields["device_id"] = gpus[0]
        if len(gpus) > 1:
            unhonoured.append(f"instance_group gpus {gpus}: every instance runs on GPU {gpus[0]}")
    accelerators = message.optimization.execution_accelerators
    for accelerator in accelerators.gpu_execution_accelerator:
        provider = _GPU_ACCELERATORS.get(accelerator.name)
        if provider is None or kind == _KIND.KIND_CPU:
            unhonoured.append(f"gpu_execution_accelerator {accelerator.name!r}")
            continue
        if fields.get("provider") != "tensorrt":  # TensorRT runs with CUDA behind it: it wins
            fields["provider"] = provider
        if accelerator.parameters:
            unhonoured.append(f"{accelerator.name} parameters {sorted(accelerator.parameters)}")
    unhonoured += [f"cpu_execution_accelerator {acc.name!r}" for acc in accelerators.cpu_execution_accelerator]
    if unhonoured:
        log.warning("config.pbtxt accelerators not honoured", extra={"model": model, "ignored": unhonoured})
    return fields


def _warmup(samples: Any, model: str) -> list[dict[str, Any]]:
    """ModelConfig's warm-up samples; an input read from a file gets seeded random data instead."""
    mapped, from_files = [], []
    for sample in samples:
        inputs = {}
        for name, data in sample.inputs.items():
            if data.WhichOneof("input_data_type") == "input_data_file":
                from_files.append(f"{sample.name or '?'}.{name}")
            entry: dict[str, Any] = {"dims": list(data.dims), "zero_data": data.zero_data}
            if data.data_type != mc.TYPE_INVALID:
                entry["data_type"] = mc.DataType.Name(data.data_type)
            inputs[name] = entry
        # 0 is unset in proto3: Triton runs a sample once and with a batch of one.
        mapped.append(
            {"name": sample.name, "batch_size": sample.batch_size or 1, "count": sample.count or 1, "inputs": inputs}
        )
    if from_files:
        log.warning("config.pbtxt warm-up input files not read", extra={"model": model, "inputs": from_files})
    return mapped
