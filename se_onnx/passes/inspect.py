"""What a model holds that matters for SE: opsets, signature, conv layers, insertion sites, SE blocks."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from se_onnx.errors import SeOnnxError
from se_onnx.ir.graph import node_label, scoped_name
from se_onnx.passes.find import NearMiss, SEBlock, detect
from se_onnx.passes.find_attention import AttentionBlock, detect_attention
from se_onnx.passes.insert import (
    ConvInfo,
    InsertOptions,
    check_insertable,
    model_convs,
    plan_insertion,
)


@dataclasses.dataclass(frozen=True)
class TensorSignature:
    name: str | None  # None only for an unnamed value of an in-memory model
    dtype: str | None
    shape: list[int | str | None] | None

    @classmethod
    def of(cls, value: ir.Value) -> TensorSignature:
        dtype = np.dtype(value.dtype.numpy()).name if value.dtype is not None and value.dtype.itemsize else None
        shape = None
        if value.shape is not None:
            shape = [dim if isinstance(dim, int) else dim.value for dim in value.shape]
        return cls(value.name, dtype, shape)


@dataclasses.dataclass(frozen=True)
class ConvLayer:
    name: str | None  # None only for an unnamed value of an in-memory model
    in_channels: int | None
    out_channels: int | None
    kernel: list[int] | None
    group: int
    depthwise: bool
    graph: str  # the path of the graph it sits in

    @classmethod
    def of(cls, node: ir.Node, graph: str) -> ConvLayer:
        info = ConvInfo.of(node, graph)
        if info is None:
            name = scoped_name(node_label(node), graph)
            return cls(name, None, None, None, node.attributes.get_int("group", 1), False, graph)
        return cls(info.name, info.in_channels, info.out_channels, list(info.kernel), info.group, info.depthwise, graph)


@dataclasses.dataclass
class ModelSummary:
    ir_version: int
    producer: str
    opsets: dict[str, int]
    inputs: list[TensorSignature]
    outputs: list[TensorSignature]
    convs: list[ConvLayer]
    insertion_sites: dict[str, list[str]]  # placement → the convs a block would follow
    se_blocks: list[SEBlock]
    se_near_misses: list[NearMiss]  # Muls that looked like an SE rescale, with why they are not
    # Blocks of every kind (SE, ECA, CBAM, coordinate attention), and the pooled gates of none.
    attention_blocks: list[AttentionBlock] = dataclasses.field(default_factory=list)
    attention_near_misses: list[NearMiss] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "ir_version": self.ir_version,
            "producer": self.producer,
            "opsets": self.opsets,
            "inputs": [dataclasses.asdict(v) for v in self.inputs],
            "outputs": [dataclasses.asdict(v) for v in self.outputs],
            "convs": [dataclasses.asdict(c) for c in self.convs],
            "insertion_sites": self.insertion_sites,
            "se_blocks": [block.to_dict() for block in self.se_blocks],
            "se_near_misses": [miss.to_dict() for miss in self.se_near_misses],
            "attention_blocks": [block.to_dict() for block in self.attention_blocks],
            "attention_near_misses": [miss.to_dict() for miss in self.attention_near_misses],
        }


def inspect_model(model: ir.Model) -> ModelSummary:
    """Summarize `model`; it is not modified."""
    producer = " ".join(part for part in (model.producer_name, model.producer_version) if part)
    convs = [ConvLayer.of(node, graph) for node, graph in model_convs(model)]
    sites: dict[str, list[str]] = {"residual": [], "conv": []}
    try:
        check_insertable(model)
    except SeOnnxError:  # no conv, or quantized: nowhere to insert
        pass
    else:
        for placement in sites:
            sites[placement] = [site.conv.name for site in plan_insertion(model, InsertOptions(where=placement)).sites]
    detection = detect(model)
    attention = detect_attention(model)
    return ModelSummary(
        ir_version=model.ir_version,
        producer=producer,
        opsets=dict(model.opset_imports),
        inputs=[TensorSignature.of(v) for v in model.graph.inputs],
        outputs=[TensorSignature.of(v) for v in model.graph.outputs],
        convs=convs,
        insertion_sites=sites,
        se_blocks=detection.blocks,
        se_near_misses=detection.near_misses,
        attention_blocks=attention.blocks,
        attention_near_misses=attention.near_misses,
    )
