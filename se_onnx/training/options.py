"""The options of `se-onnx train`, checked, and the choices each takes; free of PyTorch, so the
command line can offer them without importing it."""

from __future__ import annotations

import dataclasses

from se_onnx.errors import OptionError

TRAIN_SCOPES = ("se", "attention", "all")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "constant")
AUGMENTS = ("none", "flip-crop")
BATCH_NORM_MODES = ("frozen", "train")
AMP_MODES = ("off", "bf16", "fp16")
DEVICES_HELP = "auto|cpu|cuda|cuda:N"


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """The CLI's training options, one for one. The defaults are a fine-tuning recipe for inserted
    blocks: AdamW at 1e-3 with PyTorch's default weight decay (0.01, not on biases, norms and
    gains), a cosine schedule without warm-up (identity-initialised blocks start at the model's
    own outputs, so there is no shock to warm up from), no label smoothing or augmentation (they
    change what the model was trained to predict), and BatchNorm frozen (a fine-tune's batches are
    too few and too small to re-estimate statistics the base model learnt on its whole data)."""

    epochs: int = 5
    lr: float = 1e-3
    batch_size: int = 32  # per process
    seed: int = 0
    # se: only the SE blocks' layers; attention: the layers of every block of every kind (SE, ECA,
    # CBAM, coordinate attention); all: every layer's weights and biases
    train: str = "se"
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    augment: str = "none"
    # frozen: BatchNorm keeps its statistics and affine parameters; train: batch statistics in
    # training, running statistics updated and written back, affine parameters trained with --train all
    bn: str = "frozen"
    grad_clip: float | None = None  # the largest global gradient norm; None: no clipping
    device: str = "auto"
    amp: str = "off"
    workers: int | None = None  # None: 0 for data in memory, up to 4 for image folders
    progress: bool = True

    def validate(self) -> None:
        if self.epochs < 1:
            raise OptionError("epochs", f"must be at least 1, not {self.epochs}")
        if not self.lr > 0:
            raise OptionError("lr", f"must be positive, not {self.lr:g}")
        if self.batch_size < 1:
            raise OptionError("batch_size", f"must be at least 1, not {self.batch_size}")
        choices = {
            "train": TRAIN_SCOPES,
            "optimizer": OPTIMIZERS,
            "schedule": SCHEDULES,
            "augment": AUGMENTS,
            "bn": BATCH_NORM_MODES,
            "amp": AMP_MODES,
        }
        for option, allowed in choices.items():
            if getattr(self, option) not in allowed:
                raise OptionError(option, f"must be one of {', '.join(allowed)}, not {getattr(self, option)!r}")
        if not self.weight_decay >= 0:
            raise OptionError("weight_decay", f"must be 0 or more, not {self.weight_decay:g}")
        if not 0 <= self.label_smoothing < 1:
            raise OptionError("label_smoothing", f"must be in [0, 1), not {self.label_smoothing:g}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise OptionError("grad_clip", f"must be positive, not {self.grad_clip:g}")
        if self.workers is not None and self.workers < 0:
            raise OptionError("workers", f"must be 0 or more, not {self.workers}")

    def shaping(self, world_size: int) -> dict[str, object]:
        """The options a resumed run must share with the checkpoint's, by flag: the ones that decide
        the weights. The device, the worker count and the split into processes may change."""
        return {
            "--train": self.train,
            "--epochs": self.epochs,
            "--lr": self.lr,
            "--batch-size × processes": self.batch_size * world_size,
            "--seed": self.seed,
            "--optimizer": self.optimizer,
            "--weight-decay": self.weight_decay,
            "--schedule": self.schedule,
            "--warmup-epochs": self.warmup_epochs,
            "--label-smoothing": self.label_smoothing,
            "--augment": self.augment,
            "--bn": self.bn,
            "--grad-clip": self.grad_clip,
            "--amp": self.amp,
        }
