"""Tests of where and how long `se-onnx train` runs: devices and mixed precision, two processes under
torchrun against one, checkpoints and --resume, and the one-line errors of each."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

torch = pytest.importorskip("torch")

from models import build_samples  # noqa: E402
from se_onnx import insert_se, save_model  # noqa: E402
from se_onnx.cli import main  # noqa: E402
from se_onnx.passes.insert import InsertOptions  # noqa: E402
from se_onnx.training.checkpoint import checkpoint_path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HAS_TORCH_CUDA = torch.cuda.is_available()


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


@pytest.fixture
def job(tmp_path: Path):
    """A small ResNet-like classifier with SE blocks and BatchNorm, and 64 labelled 3 × 32 × 32 samples."""
    model, _ = insert_se(ir.from_proto(build_samples.resnet_like(opset=13)), InsertOptions(where="residual"))
    save_model(model, tmp_path / "model.onnx")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3, 32, 32)).astype(np.float32)
    y = (x[:, 0, :16].mean((1, 2)) > x[:, 0, 16:].mean((1, 2))).astype(np.int64)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    return tmp_path


def _train(job: Path, output: str, *extra: str) -> list[str]:
    return [
        "train",
        str(job / "model.onnx"),
        "-o",
        str(job / output),
        "--data",
        str(job / "data.npz"),
        "--no-progress",
        "--device",
        "cpu",
        *extra,
    ]


def test_two_gloo_processes_train_the_same_weights_as_one(job):
    recipe = ["--train", "all", "--epochs", "2", "--optimizer", "sgd", "--lr", "0.05", "--augment", "flip-crop"]
    assert main(_train(job, "one.onnx", *recipe, "--batch-size", "16")) == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "se_onnx", *_train(job, "two.onnx", *recipe, "--batch-size", "8")]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("train loss") == 1, done.stdout  # rank 0 alone prints the table
    assert "in 2 processes" in done.stdout
    one, two = _initializers(job / "one.onnx"), _initializers(job / "two.onnx")
    assert one.keys() == two.keys()
    changed = [name for name in one if not np.array_equal(one[name], _initializers(job / "model.onnx")[name])]
    assert changed
    for name in one:
        np.testing.assert_allclose(two[name], one[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_a_failing_rank_ends_every_rank_with_a_clear_message(job):
    # Rank 1 alone cannot read its data: rank 0 must not wait for it for ever.
    launcher = (
        "import os, runpy, sys; "
        "sys.argv[sys.argv.index('--data') + 1] += '.missing' if os.environ['RANK'] == '1' else ''; "
        "runpy.run_module('se_onnx', run_name='__main__')"
    )
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["--no-python", sys.executable, "-c", launcher, *_train(job, "out.onnx", "--epochs", "1")]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    assert done.returncode != 0
    assert "se-onnx: error (rank 1 of 2): " in done.stderr, done.stderr[-3000:]
    assert not (job / "out.onnx").exists()


def test_resuming_after_an_interrupted_epoch_gives_the_weights_of_an_uninterrupted_run(job, monkeypatch, capsys):
    recipe = ["--epochs", "3", "--batch-size", "16", "--warmup-epochs", "1", "--label-smoothing", "0.1"]
    assert main(_train(job, "straight.onnx", *recipe)) == 0
    assert checkpoint_path(job / "straight.onnx").is_file()

    # Interrupt in the middle of epoch 2 (4 steps per epoch): the checkpoint holds epoch 1.
    original_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def interrupting_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", interrupting_step)
    assert main(_train(job, "resumed.onnx", *recipe)) == 130
    assert "--resume continues" in capsys.readouterr().err
    monkeypatch.setattr(torch.optim.AdamW, "step", original_step)

    capsys.readouterr()
    assert main(_train(job, "resumed.onnx", *recipe, "--resume", "--json")) == 0
    report = json.loads(capsys.readouterr().out)
    assert [epoch["epoch"] for epoch in report["epochs"]] == [2, 3]
    assert report["resumed_from"] == 1
    straight, resumed = _initializers(job / "straight.onnx"), _initializers(job / "resumed.onnx")
    for name in straight:
        np.testing.assert_array_equal(resumed[name], straight[name], err_msg=name)


@pytest.mark.parametrize(
    "change, message",
    [
        (["--lr", "0.01"], "--lr 0.001 \\(now 0.01\\)"),
        (["--batch-size", "8"], "--batch-size × processes 16 \\(now 8\\)"),
        (["--model", "other"], "another model"),
        (["--epochs", "1"], "--epochs 2 \\(now 1\\)"),
        (["--checkpoint", "missing"], "no checkpoint at"),
        (["--checkpoint", "garbage"], "not a readable checkpoint"),
    ],
)
def test_resume_refuses_another_run_in_one_line(job, capsys, change, message):
    recipe = ["--epochs", "2", "--batch-size", "16"]
    assert main(_train(job, "out.onnx", *recipe)) == 0
    args = _train(job, "out.onnx", *recipe, "--resume")
    if change[0] == "--model":
        other, _ = insert_se(ir.from_proto(build_samples.resnet_like(opset=13)), InsertOptions(where="conv"))
        save_model(other, job / "other.onnx")
        args[1] = str(job / "other.onnx")
    elif change == ["--checkpoint", "missing"]:
        checkpoint_path(job / "out.onnx").unlink()
    elif change == ["--checkpoint", "garbage"]:
        checkpoint_path(job / "out.onnx").write_bytes(b"not a checkpoint")
    elif change[0] in args:
        args[args.index(change[0]) + 1] = change[1]
    else:
        args += change
    before = (job / "out.onnx").read_bytes()
    capsys.readouterr()
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert re.search(message, error), error
    assert (job / "out.onnx").read_bytes() == before


def test_a_finished_checkpoint_leaves_nothing_to_resume(job, capsys):
    assert main(_train(job, "out.onnx", "--epochs", "1")) == 0
    assert main(_train(job, "out.onnx", "--epochs", "1", "--resume")) == 2
    assert "already holds all 1 epochs" in capsys.readouterr().err


def test_bf16_on_the_cpu_trains(job, capsys):
    assert main(_train(job, "out.onnx", "--epochs", "2", "--amp", "bf16", "--lr", "0.01", "--json")) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["device"] == "cpu"
    losses = [epoch["train_loss"] for epoch in report["epochs"]]
    assert all(np.isfinite(losses))
    before, after = _initializers(job / "model.onnx"), _initializers(job / "out.onnx")
    assert any(not np.array_equal(before[name], after[name]) for name in before)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--amp", "fp16"], "--amp fp16 runs on CUDA only"),
        (["--device", "tpu"], "--device must be auto|cpu|cuda|cuda:N, not 'tpu'"),
        (["--workers", "-1"], "--workers must be 0 or more"),
        (["--weight-decay", "-1"], "--weight-decay must be 0 or more"),
        (["--label-smoothing", "1"], "--label-smoothing must be in \\[0, 1\\)"),
        (["--grad-clip", "0"], "--grad-clip must be positive"),
        (["--warmup-epochs", "5"], "--warmup-epochs"),
    ],
)
def test_bad_options_are_one_line_errors(job, capsys, extra, message):
    args = _train(job, "out.onnx", "--epochs", "2")
    assert main([*args, *extra]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert re.search(message, error), error
    assert not (job / "out.onnx").exists()


@pytest.mark.skipif(HAS_TORCH_CUDA, reason="this PyTorch sees a GPU")
def test_cuda_without_cuda_is_a_one_line_error_naming_the_fix(job, capsys):
    args = _train(job, "out.onnx", "--epochs", "1")
    args[args.index("--device") + 1] = "cuda"
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert error.startswith("se-onnx: error: --device cuda needs a CUDA build of PyTorch") or "sees no GPU" in error
    assert not (job / "out.onnx").exists()


def test_bn_train_updates_and_writes_back_the_running_statistics(job):
    assert main(_train(job, "frozen.onnx", "--epochs", "1", "--train", "all")) == 0
    assert main(_train(job, "train.onnx", "--epochs", "1", "--train", "all", "--bn", "train")) == 0
    model = onnx.load(job / "model.onnx")
    norms = [node for node in model.graph.node if node.op_type == "BatchNormalization"]
    statistics = {node.input[i] for node in norms for i in (3, 4)}
    affine = {node.input[i] for node in norms for i in (1, 2)}
    before = _initializers(job / "model.onnx")
    for output, moved in (("frozen.onnx", set()), ("train.onnx", statistics | affine)):
        after = _initializers(job / output)
        changed = {name for name in statistics | affine if not np.array_equal(before[name], after[name])}
        assert changed == moved, output


def test_grad_clip_and_the_learning_rate_column(job, capsys):
    args = ["--epochs", "2", "--grad-clip", "0.5", "--schedule", "constant", "--optimizer", "sgd", "--lr", "0.02"]
    assert main(_train(job, "out.onnx", *args)) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["epoch", "lr"]
    rows = [line.split() for line in table[1:4]]
    assert [row[1] for row in rows] == ["-", "2.00e-02", "2.00e-02"]


@pytest.mark.torch_cuda
@pytest.mark.skipif(not HAS_TORCH_CUDA, reason="needs PyTorch with a CUDA device")
@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_training_on_cuda_matches_the_cpu_run(job, capsys, amp):
    common = ["--epochs", "2", "--train", "all", "--json", "--workers", "2"]
    assert main(_train(job, "cpu.onnx", *common)) == 0
    cpu = json.loads(capsys.readouterr().out)
    args = _train(job, "gpu.onnx", *common, "--amp", amp)
    args[args.index("--device") + 1] = "cuda"
    assert main(args) == 0
    gpu = json.loads(capsys.readouterr().out)
    assert gpu["device"].startswith("cuda")
    assert abs(gpu["epochs"][-1]["train_loss"] - cpu["epochs"][-1]["train_loss"]) < (0.02 if amp == "off" else 0.1)


def test_worker_processes_give_the_weights_of_loading_in_process(job):
    recipe = ["--epochs", "1", "--batch-size", "16", "--train", "all", "--augment", "flip-crop"]
    assert main(_train(job, "inline.onnx", *recipe, "--workers", "0")) == 0
    assert main(_train(job, "workers.onnx", *recipe, "--workers", "2")) == 0
    inline, workers = _initializers(job / "inline.onnx"), _initializers(job / "workers.onnx")
    for name in inline:
        np.testing.assert_array_equal(workers[name], inline[name], err_msg=name)


def test_an_image_folder_is_decoded_and_augmented_in_worker_processes(tmp_path, capsys):
    """Images decoded a batch at a time in two workers, flip-cropped there; a bad file met in a
    worker is the command's one-line error, without the worker's traceback."""
    image = pytest.importorskip("PIL.Image")
    model, _ = insert_se(ir.from_proto(build_samples.resnet_like(opset=13)), InsertOptions(where="residual"))
    save_model(model, tmp_path / "model.onnx")
    rng = np.random.default_rng(0)
    for label in ("dark", "light"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for index in range(8):
            base = 60 if label == "dark" else 190
            pixels = rng.integers(base - 50, base + 50, (40, 36, 3)).astype(np.uint8)
            image.fromarray(pixels).save(tmp_path / "images" / label / f"{index}.png")
    args = ["train", str(tmp_path / "model.onnx"), "-o", str(tmp_path / "out.onnx"), "--data", str(tmp_path / "images")]
    args += ["--no-progress", "--device", "cpu", "--epochs", "1", "--batch-size", "4"]
    assert main([*args, "--augment", "flip-crop", "--workers", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["epochs"][-1]["epoch"] == 1
    onnx.checker.check_model(str(tmp_path / "out.onnx"), full_check=True)

    (tmp_path / "images" / "light" / "7.png").write_bytes(b"not a png")
    assert main([*args, "-o", str(tmp_path / "again.onnx"), "--workers", "2"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert error.startswith("se-onnx: error: ") and "7.png: not a readable image" in error
    assert not (tmp_path / "again.onnx").exists()
