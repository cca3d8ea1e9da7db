"""Settings of the server (from `se-onnx serve`) and of each model (its optional config.json)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from se_onnx.errors import SeOnnxError
from service.errors import first_error

MODEL_CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class ServerConfig:
    """Everything `se-onnx serve` takes; `create_app` needs nothing else."""

    model_repository: Path
    host: str = "0.0.0.0"
    port: int = 8000
    # gRPC on the same host; 0 turns it off (the default here, so that apps built in tests bind
    # nothing; `se-onnx serve` defaults to 8001, as Triton).
    grpc_port: int = 0
    provider: str = "auto"
    allow_cpu_fallback: bool = False
    device_id: int = 0
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    max_request_size: int = 64 * 1024 * 1024
    request_timeout: float = 60.0
    api_key: str | None = None
    # "repository": the key guards index, load and unload; "all": every route but the health checks.
    api_key_scope: str = "repository"
    # TLS for HTTP (and gRPC): the server's certificate chain and key; a CA bundle makes client certificates required.
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_ca_certs: Path | None = None
    log_level: str = "info"
    workers_per_model: int = 1


class _Strict(BaseModel):
    # Strict types: `"session_per_instance": 0` or `"warmup": "1"` is a mistake to report, not to coerce.
    model_config = ConfigDict(extra="forbid", strict=True)


class DynamicBatching(_Strict):
    """Triton's dynamic_batching block: how long a request may wait for others to join its batch."""

    max_queue_delay_us: int = Field(default=500, ge=0)
    max_queue_size: int = Field(default=256, ge=1)
    preferred_batch_size: list[int] = Field(default_factory=list)


class _Latest(_Strict):
    num_versions: int = Field(default=1, ge=1)


class _Specific(_Strict):
    versions: list[int]


class VersionPolicy(_Strict):
    """Exactly one of Triton's three policies; the default serves the newest version only."""

    latest: _Latest | None = None
    all: dict | None = None
    specific: _Specific | None = None

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
        return ordered[-self.latest.num_versions :]


class ModelConfig(_Strict):
    """A model's config.json; every field is optional and the server's options fill the rest."""

    max_batch_size: int = Field(default=0, ge=0)
    dynamic_batching: DynamicBatching | None = None
    provider: str | None = Field(default=None, pattern="^(auto|cpu|cuda|tensorrt)$")
    device_id: int | None = Field(default=None, ge=0)
    gpu_mem_limit: int | None = Field(default=None, ge=1)
    instance_count: int | None = Field(default=None, ge=1)
    # One ONNX Runtime session per instance instead of one shared by all (more memory).
    session_per_instance: bool = False
    # Number of runs on seeded inputs before the model reports ready (0 turns warm-up off).
    warmup: int = Field(default=1, ge=0)
    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)

    @model_validator(mode="after")
    def _batching_needs_a_batch_size(self) -> ModelConfig:
        if self.dynamic_batching is not None and not self.max_batch_size:
            raise ValueError("dynamic_batching needs max_batch_size > 0")
        return self

    @classmethod
    def parse(cls, text: str | bytes, source: str) -> ModelConfig:
        try:
            return cls.model_validate(json.loads(text))
        except RecursionError:
            raise SeOnnxError(f"{source}: invalid model config: JSON nested too deeply") from None
        except ValidationError as error:
            raise SeOnnxError(f"{source}: invalid model config: {first_error(error)}") from None
        except ValueError as error:
            raise SeOnnxError(f"{source}: invalid model config: {' '.join(str(error).split())}") from None

    @classmethod
    def read(cls, path: Path) -> ModelConfig:
        if not path.is_file():
            return cls()
        try:
            text = path.read_bytes()
        except OSError as error:
            raise SeOnnxError(f"{path}: cannot read model config: {error.strerror}") from None
        return cls.parse(text, str(path))
