"""JSON bodies of the Open Inference Protocol (KServe v2) as Triton serves them, as pydantic models."""

from __future__ import annotations

from typing import Any

from fastapi import Response
from pydantic import BaseModel, ConfigDict, Field

Parameters = dict[str, Any]

# Schemas of bodies that handlers read themselves (not as FastAPI parameters), for the OpenAPI
# document's components; `create_app` adds them.
COMPONENTS: dict[str, dict] = {}


def openapi_body(model: type[BaseModel], description: str, binary: bool = False) -> dict:
    """`openapi_extra` documenting `model` as a route's JSON body (and raw bytes when `binary`)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    COMPONENTS.update(schema.pop("$defs", {}))
    COMPONENTS[model.__name__] = schema
    content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}
    if binary:
        content["application/octet-stream"] = {"schema": {"type": "string", "format": "binary"}}
    return {"requestBody": {"content": content, "description": description, "required": False}}


class ErrorResponse(BaseModel):
    error: str


def empty_ok(description: str) -> dict:
    """Route options for a 200 with an empty body and no content type, as Triton answers health
    checks, readiness, load and unload; the OpenAPI document then declares no 200 body."""
    return {"response_class": Response, "responses": {200: {"description": description}}}


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 marks a dynamic dimension")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    # Not part of the standard fields: providers in use, batching, instance count.
    parameters: Parameters = Field(default_factory=dict)


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters = Field(default_factory=dict)
    data: Any = None


class RequestOutput(BaseModel):
    name: str
    parameters: Parameters = Field(default_factory=dict)


class InferRequest(BaseModel):
    id: str | None = None
    parameters: Parameters = Field(default_factory=dict)
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]


class _StrictBody(BaseModel):
    # `{"ready": 0}` or `{"ready": "yes"}` is a client's mistake to report, not a value to coerce.
    model_config = ConfigDict(strict=True)


class RepositoryIndexRequest(_StrictBody):
    ready: bool = False


class RepositoryModel(BaseModel):
    name: str
    version: str = ""
    state: str = Field(description="READY, LOADING, UNLOADING or UNAVAILABLE")
    reason: str = ""


class LoadRequest(_StrictBody):
    # `config` is a JSON string that replaces the model's config.json for this load, as in Triton.
    parameters: Parameters = Field(default_factory=dict)


class UnloadRequest(_StrictBody):
    parameters: Parameters = Field(default_factory=dict)


class Duration(BaseModel):
    count: int
    ns: int = Field(description="total nanoseconds")


class InferenceStatistics(BaseModel):
    success: Duration
    fail: Duration
    queue: Duration
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration
    cache_hit: Duration
    cache_miss: Duration


class BatchStatistics(BaseModel):
    batch_size: int
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration


class ModelStatistics(BaseModel):
    name: str
    version: str
    last_inference: int = Field(description="milliseconds since the epoch")
    inference_count: int
    execution_count: int
    inference_stats: InferenceStatistics
    batch_stats: list[BatchStatistics]


class StatisticsResponse(BaseModel):
    """Triton's statistics extension."""

    model_stats: list[ModelStatistics]


class SharedMemoryRegisterRequest(BaseModel):
    key: str = Field(description="the POSIX shm object's name, as given to shm_open: '/name'")
    offset: int = Field(0, ge=0, strict=True, description="where the region starts within the object, in bytes")
    byte_size: int = Field(ge=0, strict=True, description="the region's size in bytes")


class SharedMemoryStatus(BaseModel):
    name: str
    key: str
    offset: int
    byte_size: int
