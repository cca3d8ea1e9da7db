"""insert_se pauses Python's cyclic collector for the pass and always restores it."""

from __future__ import annotations

import gc

import numpy as np
import onnx_ir as ir
import pytest

from models import build_samples
from se_onnx import InsertOptions, SeOnnxError, insert_se


@pytest.fixture
def collector():
    was_enabled = gc.isenabled()
    yield
    gc.enable() if was_enabled else gc.disable()


def test_collector_is_off_during_the_pass_and_back_on_after(collector, monkeypatch):
    from se_onnx.passes import insert as insert_module

    seen = []
    original = insert_module._add_blocks

    def spy(*args):
        seen.append(gc.isenabled())
        return original(*args)

    monkeypatch.setattr(insert_module, "_add_blocks", spy)
    gc.enable()
    insert_se(ir.from_proto(build_samples.resnet_like(opset=13)), InsertOptions(where="conv"))
    assert seen == [False] and gc.isenabled()


def test_collector_comes_back_after_an_error(collector):
    gc.enable()
    # Weights for no block of the model: refused while the blocks are being added.
    with pytest.raises(SeOnnxError, match="no weights for block"):
        options = InsertOptions(weights={"other.fc1.weight": np.zeros((2, 4))})
        insert_se(ir.from_proto(build_samples.resnet_like(opset=13)), options)
    assert gc.isenabled()


def test_a_disabled_collector_stays_disabled(collector):
    gc.disable()
    insert_se(ir.from_proto(build_samples.resnet_like(opset=13)), InsertOptions(where="conv"))
    assert not gc.isenabled()
