"""Settings of the server (from `se-onnx serve`) and of each model (its optional config.json or config.pbtxt)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from se_onnx.errors import SeOnnxError
from se_onnx.runtime.sessions import PROVIDERS
from service.errors import first_error

MODEL_CONFIG_FILE = "config.json"
MODEL_FILE = "model.onnx"
# Triton's names of what se-onnx serves: ONNX models on ONNX Runtime.
PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"


PROVIDER_CHOICES = ("auto", *PROVIDERS)
# 'auto': CUDA where it works, else the CPU; the others as se_onnx.runtime.sessions names them.
Provider = Literal[PROVIDER_CHOICES]  # type: ignore[valid-type]
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
ENV_PREFIX = "SE_ONNX_"


def env_name(field: str) -> str:
    """The environment variable of a ServerSettings field: grpc_port → SE_ONNX_GRPC_PORT."""
    return ENV_PREFIX + field.upper()


class ServerSettings(BaseSettings):
    """Everything the server takes, from keyword arguments or SE_ONNX_<FIELD> environment variables
    (arguments win); `se-onnx serve` derives its options from these fields and `create_app` needs
    nothing else. An invalid value or combination is a ValidationError here, whoever builds the
    settings; messages name a setting as `se-onnx serve` spells it (--api-key-scope for api_key_scope)."""

    # hide_input_in_errors: a cross-field error would otherwise print every setting, the API key too.
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid", hide_input_in_errors=True)

    model_repository: Path = Field(
        default=Path("models"),
        description="directory of models; a relative path is taken from the working directory",
    )
    host: str = Field(default="0.0.0.0", description="address to listen on")
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP port to listen on")
    grpc_port: int = Field(
        default=8001,
        ge=0,
        le=65535,
        description="gRPC port to listen on, Triton's GRPCInferenceService (0 turns gRPC off)",
    )
    provider: Provider = Field(
        default="auto",
        description="execution provider for every model without its own (auto: CUDA when usable, else CPU)",
    )
    allow_cpu_fallback: bool = Field(
        default=False,
        description="run on the CPU when the requested GPU provider is not usable, instead of failing at start-up",
    )
    device_id: int = Field(default=0, ge=0, description="GPU device id")
    intra_op_threads: int = Field(
        default=0, ge=0, description="ONNX Runtime threads within an operator (0: its choice)"
    )
    inter_op_threads: int = Field(default=0, ge=0, description="ONNX Runtime threads across operators (0: its choice)")
    max_request_size: int = Field(
        default=64 * 1024 * 1024,
        ge=1,
        description="largest request body (and gRPC message) in bytes; larger ones get 413",
    )
    request_timeout: float = Field(
        default=60.0, ge=0, description="seconds a request may wait and run before it gets 503 (0: no limit)"
    )
    workers_per_model: int = Field(
        default=1, ge=1, description="instances (inference threads) per model without its own instance_count"
    )
    # What a client can make the server hold; docs/serve/limits.md says how to size each.
    max_inflight_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1,
        description="bytes of requests held at once, HTTP bodies and gRPC messages together; a request past it "
        "gets 503 (gRPC RESOURCE_EXHAUSTED). At least --max-request-size",
    )
    grpc_stream_inflight: int = Field(
        default=32,
        ge=1,
        le=65536,
        description="requests in flight on one ModelStreamInfer stream; at this many the server reads no further "
        "request from that stream until one is answered",
    )
    grpc_max_concurrent_streams: int = Field(
        default=100, ge=1, le=2**31 - 1, description="HTTP/2 streams (calls) one gRPC connection may have open at once"
    )
    grpc_max_concurrent_rpcs: int = Field(
        default=1000,
        ge=1,
        le=2**31 - 1,
        description="gRPC calls in progress at once, all connections together; a call past it ends RESOURCE_EXHAUSTED",
    )
    http_header_timeout: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="seconds a client may take to send a request's headers (from the connection or the request's "
        "first byte); then the connection is closed",
    )
    http_body_timeout: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="seconds a client may take to send a request body, one more for every --http-min-upload-rate "
        "bytes received; then 408 and the connection is closed",
    )
    http_min_upload_rate: int = Field(
        default=256 * 1024,
        ge=1,
        description="bytes per second of a request body that earn it one more second (see --http-body-timeout)",
    )
    log_level: Literal[LOG_LEVELS] = Field(default="info", description="log level")  # type: ignore[valid-type]
    trace: bool = Field(
        default=False,
        description="trace inference requests with OpenTelemetry, exported as its OTEL_* environment variables "
        "say (OTLP by default); needs pip install 'se-onnx[trace]'",
    )
    api_key: str | None = Field(
        default=None,
        repr=False,
        description="key that enables the repository API (index, load, unload); clients send it as X-API-Key or "
        "Authorization: Bearer. Prefer the environment variable or a key file: a key on the command line "
        "shows in the process list",
    )
    api_key_file: Path | None = Field(default=None, description="read the API key from this file (its first line)")
    api_key_scope: Literal["repository", "all"] = Field(
        default="repository",
        description="what the key guards: repository (index, load, unload) or all (every route and RPC but the "
        "health checks)",
    )
    ssl_certfile: Path | None = Field(
        default=None, description="serve HTTPS, and gRPC over TLS, with this PEM certificate (chain)"
    )
    ssl_keyfile: Path | None = Field(
        default=None, description="the certificate's PEM private key (default: inside the certificate file)"
    )
    ssl_ca_certs: Path | None = Field(
        default=None,
        description="PEM bundle of CAs; clients must then present a certificate signed by one (mutual TLS)",
    )
    model_load_timeout: float = Field(
        default=600.0,
        ge=0,
        description="seconds a model version may take to load and warm up; a longer load fails, frees what it "
        "made and leaves the version UNAVAILABLE (0: no limit)",
    )

    @field_validator("model_repository")
    @classmethod
    def _a_directory(cls, path: Path) -> Path:
        if not path.is_dir():
            raise ValueError(f"{path.absolute()}: model repository is not a directory")
        return path.resolve()  # logs and errors then say which folder, wherever the server was started

    @field_validator("ssl_certfile", "ssl_keyfile", "ssl_ca_certs")
    @classmethod
    def _readable(cls, path: Path | None) -> Path | None:
        if path is not None and not (path.is_file() and os.access(path, os.R_OK)):
            raise ValueError(f"{path}: not a readable file")
        return path

    @field_validator("api_key")
    @classmethod
    def _empty_key_is_none(cls, key: str | None) -> str | None:
        return key or None  # SE_ONNX_API_KEY= (set but empty) means no key

    @model_validator(mode="before")
    @classmethod
    def _key_from_file(cls, data: Any) -> Any:
        """The key of api_key_file becomes api_key, so the rest of the server knows one key."""
        if not isinstance(data, dict) or data.get("api_key_file") is None:
            return data
        if data.get("api_key"):
            raise ValueError("give the API key once: --api-key (or SE_ONNX_API_KEY) or --api-key-file, not both")
        path = Path(data["api_key_file"])
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or error
            raise ValueError(f"{path}: cannot read the API key file ({reason})") from None
        if not lines or not lines[0].strip():
            raise ValueError(f"{path}: the API key file is empty")
        return {**data, "api_key": lines[0].strip()}

    @model_validator(mode="after")
    def _consistent(self) -> ServerSettings:
        if self.grpc_port == self.port:
            raise ValueError(f"--grpc-port and --port are both {self.port}; give gRPC a port of its own")
        if self.api_key_scope == "all" and not self.api_key:
            raise ValueError("--api-key-scope all needs an API key (SE_ONNX_API_KEY, --api-key-file or --api-key)")
        if self.max_inflight_bytes < self.max_request_size:
            raise ValueError(
                f"--max-inflight-bytes ({self.max_inflight_bytes}) is below --max-request-size "
                f"({self.max_request_size}); a request of the largest size could never be served"
            )
        if (self.ssl_keyfile or self.ssl_ca_certs) and not self.ssl_certfile:
            raise ValueError("--ssl-keyfile and --ssl-ca-certs need --ssl-certfile")
        return self


# The ranges of the Triton ModelConfig protobuf fields that config.json fields map to
# (tritonclient.grpc.model_config_pb2): a value past them cannot be answered by gRPC ModelConfig.
INT32_MAX = 2**31 - 1
UINT32_MAX = 2**32 - 1
INT64_MAX = 2**63 - 1
# Tighter bounds where the protobuf's range exceeds what a server can honour: every batch row,
# queued request, instance thread and warm-up run costs memory or time before a request is served.
MAX_BATCH_SIZE = 65536
MAX_QUEUE_SIZE = 65536
MAX_INSTANCES = 256
MAX_WARMUP_RUNS = 1000
# Elements of one warm-up input (batch included): 64 Mi, 256 MiB of FP32, made before the model serves.
MAX_WARMUP_ELEMENTS = 2**26
# The longest a request may wait for others to join its batch (60 s); `check_server` also holds it
# to the server's --request-timeout, past which every batched request would time out first.
MAX_QUEUE_DELAY_US = 60_000_000


class _Strict(BaseModel):
    # Strict types: `"session_per_instance": 0` or `"warmup": "1"` is a mistake to report, not to coerce.
    model_config = ConfigDict(extra="forbid", strict=True)


class DynamicBatching(_Strict):
    """Triton's dynamic_batching block: how long a request may wait for others to join its batch."""

    max_queue_delay_us: int = Field(
        default=500,
        ge=0,
        le=MAX_QUEUE_DELAY_US,
        description="microseconds a request may wait for others to join its batch (Triton's "
        f"max_queue_delay_microseconds); 0 to {MAX_QUEUE_DELAY_US} and at most the server's --request-timeout",
    )
    max_queue_size: int = Field(
        default=256,
        ge=1,
        le=MAX_QUEUE_SIZE,
        description=f"requests that may wait for a batch; more get 503 (1 to {MAX_QUEUE_SIZE}; Triton's "
        "default_queue_policy.max_queue_size)",
    )
    preferred_batch_size: list[int] = Field(
        default_factory=list,
        description="batch sizes to send as soon as they are reached, without waiting out the delay: unique, "
        "each 1 to max_batch_size",
    )

    @field_validator("preferred_batch_size")
    @classmethod
    def _positive_and_unique(cls, sizes: list[int]) -> list[int]:
        if any(size < 1 for size in sizes):
            raise ValueError(f"preferred batch sizes must be positive, got {sizes}")
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"preferred batch sizes must be unique, got {sizes}")
        return sizes


# Triton's tensor data types that the protocol carries, and the protocol's name of each.
TRITON_DATATYPES = {
    f"TYPE_{'STRING' if datatype == 'BYTES' else datatype}": datatype
    for datatype in ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64")
    + ("FP16", "FP32", "FP64", "BYTES")
}
TritonDatatype = Literal[tuple(TRITON_DATATYPES)]  # type: ignore[valid-type]


class TensorReshape(_Strict):
    """Triton's reshape block of an input or output."""

    shape: list[int] = Field(description="the model's shape of the tensor, batch dimension excluded")


class TensorConfig(_Strict):
    """One of Triton's `input` or `output` entries: checked against the ONNX model when it loads."""

    name: str = Field(min_length=1, description="the ONNX model's input or output of this name")
    data_type: TritonDatatype = Field(description="Triton's data type, the model's: TYPE_FP32, TYPE_STRING …")  # type: ignore[valid-type]
    dims: list[int] = Field(
        description="the shape without the batch dimension when max_batch_size > 0; -1 for a variable "
        "dimension; a fixed size where the model's is dynamic narrows what requests may send"
    )
    reshape: TensorReshape | None = Field(
        default=None,
        description="{shape: [...]}: the shape the model takes (and gives) instead of dims, batch dimension "
        "excluded; the server reshapes between the two; both fixed and of the same number of elements",
    )

    @field_validator("dims")
    @classmethod
    def _dims(cls, dims: list[int]) -> list[int]:
        if any(dim < -1 or dim > INT64_MAX for dim in dims):
            raise ValueError(f"dims are sizes or -1 (variable), got {dims}")
        return dims

    @model_validator(mode="after")
    def _reshape_keeps_the_elements(self) -> TensorConfig:
        if self.reshape is None:
            return self
        shape = self.reshape.shape
        if -1 in self.dims or any(dim < 0 for dim in shape):
            raise ValueError(
                f"{self.name!r}: reshape needs fixed dims and shape, got dims {self.dims} and reshape {shape}"
            )
        if math.prod(self.dims) != math.prod(shape):
            raise ValueError(
                f"{self.name!r}: reshape {shape} does not hold the {math.prod(self.dims)} elements of dims {self.dims}"
            )
        return self


class WarmupInput(_Strict):
    """One input of a warm-up sample (Triton's model_warmup.inputs)."""

    data_type: TritonDatatype = Field(description="Triton's data type of the input")  # type: ignore[valid-type]
    dims: list[int] = Field(description="its shape, batch dimension excluded; fixed sizes")
    zero_data: bool = Field(default=False, description="zeros (or empty strings) instead of seeded random data")

    @field_validator("dims")
    @classmethod
    def _fixed(cls, dims: list[int]) -> list[int]:
        if any(dim < 0 for dim in dims):
            raise ValueError(f"warm-up dims are fixed sizes, got {dims}")
        return dims


class WarmupSample(_Strict):
    """One of Triton's model_warmup samples: inputs to run `count` times before the model reports ready."""

    name: str = Field(default="", description="the sample's name, for the log")
    batch_size: int = Field(
        default=1, ge=1, le=MAX_BATCH_SIZE, description="rows of each input when max_batch_size > 0"
    )
    count: int = Field(default=1, ge=1, le=MAX_WARMUP_RUNS, description=f"runs, 1 to {MAX_WARMUP_RUNS}")
    inputs: dict[str, WarmupInput] = Field(min_length=1, description="input name → its data")

    @model_validator(mode="after")
    def _bounded(self) -> WarmupSample:
        for name, data in self.inputs.items():
            if self.batch_size * math.prod(data.dims) > MAX_WARMUP_ELEMENTS:
                raise ValueError(
                    f"warm-up sample {self.name!r} input {name!r} has more than {MAX_WARMUP_ELEMENTS} elements"
                )
        return self


class _Latest(_Strict):
    num_versions: int = Field(
        default=1, ge=1, le=UINT32_MAX, description=f"how many of the newest versions to serve (1 to {UINT32_MAX})"
    )


class _All(_Strict):
    """Serve every version; the block takes no fields."""


class _Specific(_Strict):
    versions: list[int] = Field(
        min_length=1, description=f"the versions to serve, each 0 to {INT64_MAX} (a version folder's number)"
    )

    @field_validator("versions")
    @classmethod
    def _version_numbers(cls, versions: list[int]) -> list[int]:
        if any(not 0 <= version <= INT64_MAX for version in versions):
            raise ValueError(f"versions are numbers from 0 to {INT64_MAX}, got {versions}")
        return versions


class VersionPolicy(_Strict):
    """Exactly one of Triton's three policies; the default serves the newest version only."""

    latest: _Latest | None = Field(default=None, description="serve the newest num_versions versions")
    all: _All | None = Field(default=None, description="serve every version ({})")
    specific: _Specific | None = Field(default=None, description="serve the versions listed")

    @model_validator(mode="after")
    def _one_policy(self) -> VersionPolicy:
        chosen = [name for name in ("latest", "all", "specific") if getattr(self, name) is not None]
        if len(chosen) > 1:
            raise ValueError(f"choose one version policy, not {' and '.join(chosen)}")
        if not chosen:
            self.latest = _Latest()
        return self

    def select(self, versions: list[int]) -> list[int]:
        ordered = sorted(versions)
        if self.all is not None:
            return ordered
        if self.specific is not None:
            return [v for v in ordered if v in self.specific.versions]
        assert self.latest is not None  # the validator sets it when no other policy is chosen
        return ordered[-self.latest.num_versions :]


class ModelConfig(_Strict):
    """A model's config.json; every field is optional and the server's options fill the rest. Each
    field stays within the range of the Triton ModelConfig protobuf field it maps to, and within the
    bounds above; readers of other formats (config.pbtxt) validate through this model too."""

    name: str | None = Field(default=None, description="the model's name; when given, its folder's name")
    platform: str | None = Field(
        default=None, description=f"Triton's platform: only {PLATFORM} (ONNX Runtime) is served"
    )
    backend: str | None = Field(default=None, description=f"Triton's backend: only {BACKEND} is served")
    default_model_filename: str | None = Field(
        default=None,
        description=f"the model file in each version folder (default {MODEL_FILE}); a file name, not a path",
    )
    max_batch_size: int = Field(
        default=0,
        ge=0,
        le=MAX_BATCH_SIZE,
        description=f"largest batch (first dimension) a request or a dynamic batch may have, 0 to {MAX_BATCH_SIZE}; "
        "0: the model takes no batch dimension",
    )
    dynamic_batching: DynamicBatching | None = Field(
        default=None, description="batch requests together on the server (needs max_batch_size > 0)"
    )
    provider: Provider | None = Field(
        default=None, description="execution provider of this model (default: the server's --provider)"
    )
    device_id: int | None = Field(
        default=None, ge=0, le=INT32_MAX, description=f"GPU device id, 0 to {INT32_MAX} (default: the server's)"
    )
    gpu_mem_limit: int | None = Field(
        default=None, ge=1, le=INT64_MAX, description="bytes of GPU memory the CUDA provider may take for its arena"
    )
    instance_count: int | None = Field(
        default=None,
        ge=1,
        le=MAX_INSTANCES,
        description=f"inference threads of this model, 1 to {MAX_INSTANCES} (default: --workers-per-model)",
    )
    session_per_instance: bool = Field(
        default=False,
        description="one ONNX Runtime session per instance instead of one shared by all (more memory)",
    )
    warmup: int = Field(
        default=1,
        ge=0,
        le=MAX_WARMUP_RUNS,
        description=f"runs on seeded inputs before the model reports ready, 0 to {MAX_WARMUP_RUNS} (0: no warm-up)",
    )
    version_policy: VersionPolicy = Field(
        default_factory=VersionPolicy,
        description="which versions to serve: latest (the default, newest one), all, or specific",
    )
    input: list[TensorConfig] = Field(
        default_factory=list, description="the model's inputs as Triton lists them; each must agree with the model"
    )
    output: list[TensorConfig] = Field(
        default_factory=list, description="the model's outputs as Triton lists them; each must agree with the model"
    )
    model_warmup: list[WarmupSample] = Field(
        default_factory=list,
        description=f"warm-up samples run instead of the seeded warm-up runs; at most {MAX_WARMUP_RUNS} runs in all",
    )
    parameters: dict[str, str] = Field(
        default_factory=dict, description="Triton's string parameters: kept and reported, not interpreted"
    )

    @property
    def model_filename(self) -> str:
        """The model file in each version folder."""
        return self.default_model_filename or MODEL_FILE

    @field_validator("platform", "backend")
    @classmethod
    def _onnx_runtime(cls, value: str | None, info: ValidationInfo) -> str | None:
        served = PLATFORM if info.field_name == "platform" else BACKEND
        if value not in (None, "", served):
            raise ValueError(f"{info.field_name} {value!r} is not served: se-onnx serves ONNX models ({served})")
        return value or None

    @field_validator("default_model_filename")
    @classmethod
    def _a_file_name(cls, name: str | None) -> str | None:
        if name is not None and (name in ("", ".", "..") or "/" in name or "\\" in name):
            raise ValueError(f"default_model_filename must be a file name, got {name!r}")
        return name

    @model_validator(mode="after")
    def _tensors_and_warmup(self) -> ModelConfig:
        for kind in ("input", "output"):
            names = [tensor.name for tensor in getattr(self, kind)]
            repeated = next((name for name in names if names.count(name) > 1), None)
            if repeated is not None:
                raise ValueError(f"{kind} {repeated!r} is listed twice")
        runs = sum(sample.count for sample in self.model_warmup)
        if runs > MAX_WARMUP_RUNS:
            raise ValueError(f"model_warmup runs {runs} times in all, more than {MAX_WARMUP_RUNS}")
        return self

    @model_validator(mode="after")
    def _batching_needs_a_batch_size(self) -> ModelConfig:
        if self.dynamic_batching is not None:
            if not self.max_batch_size:
                raise ValueError("dynamic_batching needs max_batch_size > 0")
            too_large = [size for size in self.dynamic_batching.preferred_batch_size if size > self.max_batch_size]
            if too_large:
                raise ValueError(
                    f"dynamic_batching.preferred_batch_size {too_large[0]} is larger than max_batch_size "
                    f"{self.max_batch_size}"
                )
        return self

    def check_server(self, server: ServerSettings, source: str) -> None:
        """SeOnnxError unless the config fits the server's settings, which config.json cannot see."""
        batching = self.dynamic_batching
        limit_us = server.request_timeout * 1e6
        if batching is not None and server.request_timeout > 0 and batching.max_queue_delay_us > limit_us:
            raise SeOnnxError(
                f"{source}: invalid model config: dynamic_batching.max_queue_delay_us {batching.max_queue_delay_us} "
                f"is longer than the server's --request-timeout ({server.request_timeout:g} s)"
            )

    @classmethod
    def parse(cls, text: str | bytes, source: str) -> ModelConfig:
        try:
            fields = json.loads(text)
        except RecursionError:
            raise SeOnnxError(f"{source}: invalid model config: JSON nested too deeply") from None
        except ValueError as error:
            raise SeOnnxError(f"{source}: invalid model config: {' '.join(str(error).split())}") from None
        return cls.validated(fields, source)

    @classmethod
    def validated(cls, fields: Any, source: str) -> ModelConfig:
        """The config of `fields` (parsed JSON, or what config.pbtxt maps to); SeOnnxError naming the field."""
        try:
            return cls.model_validate(fields)
        except RecursionError:
            raise SeOnnxError(f"{source}: invalid model config: JSON nested too deeply") from None
        except ValidationError as error:
            raise SeOnnxError(f"{source}: invalid model config: {first_error(error)}") from None

    @classmethod
    def read(cls, path: Path) -> ModelConfig:
        if not path.is_file():
            return cls()
        try:
            text = path.read_bytes()
        except OSError as error:
            raise SeOnnxError(f"{path}: cannot read model config: {error.strerror}") from None
        return cls.parse(text, str(path))
