"""The training checkpoint beside OUTPUT: what `--resume` needs to continue as if never stopped.

After every epoch, rank 0 writes `OUTPUT.ckpt` (a temporary file, then a rename, so an interrupted
write leaves the previous checkpoint whole): the trained parameters and BatchNorm statistics,
the optimizer's, schedule's and gradient scaler's states, the epoch, the random number generators
and the per-epoch results so far. Two things tie a checkpoint to its run, and `--resume` refuses
one that matches neither: the fingerprint of the model it started from (graph and weights), and
the options that shape the training (recipe, data order, global batch).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from se_onnx.errors import SeOnnxError
from se_onnx.training.graph_module import OnnxModule

FORMAT = 1
SUFFIX = ".ckpt"


def checkpoint_path(output: str | os.PathLike) -> Path:
    """Where the checkpoint of a run writing `output` lies: beside it, `OUTPUT.ckpt`."""
    output = Path(output)
    return output.with_name(output.name + SUFFIX)


def fingerprint(module: OnnxModule) -> str:
    """A digest of the graph's ops and wiring and of every float constant's shape and values: taken
    before training, it names the model a run started from."""
    digest = hashlib.sha256()
    for op_type, inputs, outputs, _ in module.steps:
        digest.update(repr((op_type, inputs, outputs)).encode())
    for name, tensor in module.parameters_by_name.items():
        data = tensor.detach().cpu().contiguous()
        digest.update(repr((name, tuple(data.shape), str(data.dtype))).encode())
        digest.update(data.numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically: a temporary file in the same folder, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        torch.save({"format": FORMAT, **state}, temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, model_fingerprint: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint at `path`, refused in one line when it is from another model or run.
    `options` maps each option that shapes training, by its flag, to its value."""
    if not path.is_file():
        raise SeOnnxError(f"--resume: no checkpoint at {path} (it is written beside OUTPUT after each epoch)")
    try:
        # weights_only: a checkpoint is data; unpickling arbitrary objects would run their code.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises pickle's, zipfile's and its own errors for a bad file
        raise SeOnnxError(
            f"--resume: {path} is not a readable checkpoint ({' '.join(str(error).split())[:200]})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise SeOnnxError(f"--resume: {path} is not an se-onnx training checkpoint of format {FORMAT}")
    if state["fingerprint"] != model_fingerprint:
        raise SeOnnxError(
            f"--resume: {path} was written while training another model (its graph or starting weights differ); "
            "pass the model that run started from, or start afresh without --resume"
        )
    changed = [
        f"{name} {state['options'].get(name)!r} (now {value!r})"
        for name, value in options.items()
        if state["options"].get(name) != value
    ]
    if changed:
        raise SeOnnxError(
            f"--resume: {path} was written with other options: {', '.join(changed)}; resume with the same ones"
        )
    return state
