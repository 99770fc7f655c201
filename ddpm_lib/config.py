"""The configuration of a training run: a frozen dataclass with the paper's defaults, checked when built.

Ho et al. 2020, Sec. 4 and App. B (CIFAR-10): T = 1000, linear betas 1e-4 .. 0.02, Adam at 2e-4 with
5,000 warm-up steps, batch 128, gradient clipping at 1, EMA decay 0.9999, dropout 0.1. Every field
is validated in ``__post_init__``, so a bad value fails before any data loads or step runs.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Literal

from ddpm_lib.checks import check_bool, check_choice, check_float, check_int
from ddpm_lib.data import DatasetName
from ddpm_lib.devices import Precision
from ddpm_lib.diffusion import LossType, PredictionType, VarianceType
from ddpm_lib.samplers import SamplerName
from ddpm_lib.schedules import ScheduleName
from ddpm_lib.unet import MODEL_PRESETS

Optimizer = Literal["adam", "adamw"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. Defaults: Ho et al. 2020, CIFAR-10 (Sec. 4, App. B)."""

    # data
    dataset: DatasetName = "toy_cars"
    # for stanford_cars (optional), cifar10 (optional), folder (required)
    data_root: str | None = None
    num_images: int | None = None  # toy_cars only: size of the train split (default 8,144)
    image_size: int = 32
    # model and diffusion
    model: str = "ddpm-cifar10"  # a preset of ddpm_lib.unet.build_model (MODEL_PRESETS)
    dropout: float | None = None  # None keeps the preset's dropout (0.1 in the paper's presets)
    # width: channels of the U-Net's first level (None: the preset's)
    base_channels: int | None = None
    num_res_blocks: int | None = None  # depth: ResBlocks per level (None: the preset's)
    # feature-map sizes with self-attention, () for none (None: the preset's)
    attention_resolutions: tuple[int, ...] | None = None
    schedule: ScheduleName = "linear"  # beta_1 = 1e-4 ... beta_T = 0.02
    num_timesteps: int = 1000  # T
    # sigma_t^2 = tilde-beta_t for the samples the engine draws
    variance_type: VarianceType = "fixed_small"
    loss_type: LossType = "mse"  # L_simple, Eq. 14
    # the network predicts eps (the paper) or v (Salimans & Ho 2022)
    prediction_type: PredictionType = "epsilon"
    # Min-SNR-gamma loss weighting (Hang et al. 2023; they use 5); None: L_simple's uniform weight
    snr_gamma: float | None = None
    # class conditioning with classifier-free guidance (Ho & Salimans 2022)
    class_cond: bool = False  # condition the network on the dataset's labels: f(x_t, t, y)
    # probability of replacing a label by the null label (the paper's 0.1 and 0.2 tie; 0.5 is worse)
    p_uncond: float = 0.1
    num_classes: int = 0  # set from the dataset when class_cond (6 body types for toy_cars)
    # the dataset's class names, kept so a checkpoint samples by name
    class_names: tuple[str, ...] = ()
    # optimisation
    batch_size: int = 128  # global batch (split across processes under torchrun)
    lr: float = 2e-4
    warmup_steps: int = 5000  # linear learning-rate warm-up
    optimizer: Optimizer = "adam"
    weight_decay: float = 0.0  # for adamw
    grad_clip: float = 1.0  # maximum gradient norm
    ema_decay: float = 0.9999
    # decay_k = min(ema_decay, (1 + k) / (10 + k)): a useful EMA in short runs too
    ema_warmup: bool = True
    # speed
    precision: Precision = "auto"  # auto: measured on CPUs (ddpm_lib.devices), bf16 or fp16 on CUDA
    channels_last: bool = True
    compile: bool = False  # torch.compile the model (minutes of compilation; pays off on long runs)
    deterministic: bool = False  # CUDA: deterministic kernels, so a resumed run matches an uninterrupted one bit for bit (slower)
    # budget, logging, checkpoints
    # the run's total number of optimiser steps (a resumed run stops here too)
    max_steps: int = 800_000
    max_minutes: float | None = None  # wall-clock budget of this invocation
    seed: int = 0
    log_every: int = 10  # loss CSV rows
    sample_every: int = 0  # sample grids from fixed noise (0: only at the end)
    num_sample_images: int = 16
    sample_sampler: SamplerName = "ddim"
    sample_steps: int | None = None  # steps of the sample grids (None: min(50, T))
    sample_eta: float = 1.0
    checkpoint_every: int = 1000

    def __post_init__(self):
        check_choice(self.dataset, DatasetName, "dataset")
        check_choice(self.model, MODEL_PRESETS, "model")
        check_choice(self.schedule, ScheduleName, "schedule")
        check_choice(self.variance_type, VarianceType, "variance_type")
        check_choice(self.loss_type, LossType, "loss_type")
        check_choice(self.prediction_type, PredictionType, "prediction_type")
        if self.snr_gamma is not None:
            check_float(self.snr_gamma, "snr_gamma", 0, min_inclusive=False)
        check_choice(self.optimizer, Optimizer, "optimizer")
        check_choice(self.precision, Precision, "precision")
        check_choice(self.sample_sampler, SamplerName, "sample_sampler")
        for name in (
            "image_size",
            "num_timesteps",
            "batch_size",
            "max_steps",
            "log_every",
            "checkpoint_every",
            "num_sample_images",
        ):
            check_int(getattr(self, name), name, minimum=8 if name == "image_size" else 1)
        for name in ("warmup_steps", "sample_every", "seed"):
            check_int(getattr(self, name), name, minimum=0)
        if self.num_images is not None:
            check_int(self.num_images, "num_images", minimum=1)
        if self.sample_steps is not None:
            check_int(self.sample_steps, "sample_steps", 1, self.num_timesteps)
        check_float(self.lr, "lr", 0, 1, min_inclusive=False)
        check_float(self.weight_decay, "weight_decay", 0)
        check_float(self.grad_clip, "grad_clip", 0, min_inclusive=False)
        check_float(self.ema_decay, "ema_decay", 0, 1, max_inclusive=False)
        check_float(self.sample_eta, "sample_eta", 0, 1)
        if self.dropout is not None:
            check_float(self.dropout, "dropout", 0, 1, max_inclusive=False)
        for name in ("base_channels", "num_res_blocks"):
            if getattr(self, name) is not None:
                check_int(getattr(self, name), name, minimum=1)
        if self.attention_resolutions is not None:
            # a list after a round trip
            object.__setattr__(self, "attention_resolutions", tuple(self.attention_resolutions))
            for r in self.attention_resolutions:
                check_int(r, "attention_resolutions entry (a feature-map size)", minimum=1)
        shape_overrides = [
            n
            for n in ("base_channels", "num_res_blocks", "attention_resolutions")
            if getattr(self, n) is not None
        ]
        if shape_overrides and self.model in ("simple", "resnet18"):
            raise ValueError(
                f"{', '.join(shape_overrides)} change a DDPM U-Net preset; {self.model!r} has a fixed shape"
            )
        if self.max_minutes is not None:
            check_float(self.max_minutes, "max_minutes", 0, min_inclusive=False)
        check_float(self.p_uncond, "p_uncond", 0, 1, max_inclusive=False)
        check_int(self.num_classes, "num_classes", minimum=0)
        # a list after a checkpoint round trip
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        if self.class_cond and self.model in ("simple", "resnet18"):
            raise ValueError(
                f"class_cond needs one of the DDPM U-Net presets; {self.model!r} takes no labels"
            )
        if not self.class_cond and self.num_classes:
            raise ValueError(
                "num_classes is set only for a class-conditional run (class_cond=True)"
            )
        for name in ("ema_warmup", "channels_last", "compile", "class_cond", "deterministic"):
            check_bool(getattr(self, name), name)
        if self.data_root is not None:
            if not isinstance(self.data_root, (str, os.PathLike)):
                raise ValueError(
                    f"data_root must be a path (str or pathlib.Path), got {self.data_root!r}"
                )
            # a str: checkpoints hold plain types only
            object.__setattr__(self, "data_root", os.fspath(self.data_root))
        if self.dataset == "folder" and not self.data_root:
            raise ValueError(
                "dataset 'folder' needs data_root (--data-root), the directory that holds the images"
            )
        if self.num_images is not None and self.dataset != "toy_cars":
            raise ValueError(
                f"num_images sets the size of the generated toy_cars dataset; {self.dataset} has a fixed size"
            )

    @classmethod
    def cpu_demo(cls, **overrides) -> TrainConfig:
        """The toy-cars configuration for a CPU, chosen by quality per CPU minute (``benchmarks/recipe.py``, README).

        The ``small`` U-Net without attention, batch 64, a high learning rate and a short EMA, a cosine schedule
        over T = 500 steps, v-prediction with Min-SNR-5 weighting: at 10 minutes of a 2-core CPU, FID 8.6 against
        20.7 for the recipe it replaced (the paper's loss and schedule with the same network and optimiser).
        """
        base = dict(
            model="small",
            dropout=0.0,
            batch_size=64,
            lr=1e-3,
            warmup_steps=100,
            ema_decay=0.999,
            schedule="cosine",
            num_timesteps=500,
            prediction_type="v_prediction",
            snr_gamma=5.0,
            checkpoint_every=250,
            sample_every=0,
            log_every=10,
        )
        # the study's network; another model keeps its own shape
        if overrides.get("model", "small") == "small":
            base["attention_resolutions"] = ()
        return cls(**{**base, **overrides})

    @classmethod
    def ddpm_demo(cls, **overrides) -> TrainConfig:
        """The paper's DDPM at CPU size: Ho et al.'s objective and schedule (eps-prediction, L_simple,
        linear betas, T = 1000, attention at 16x16) with the CPU recipe's network and optimiser (the
        ``small`` U-Net, batch 64, lr 1e-3, EMA 0.999). Notebook 05 trains it; the shipped
        ``ddpm_toy_cars_32.pt`` is 1,600 steps of it; notebook 08 improves it one change at a time
        into :meth:`cpu_demo`."""
        return cls.cpu_demo(**{**CPU_RECIPE_BEFORE_STUDY, **overrides})

    @classmethod
    def flow_demo(cls, **overrides) -> TrainConfig:
        """Flow matching (rectified flow) on the shipped CPU recipe: the straight path ``(1 - s) x_0 + s eps``
        (schedule ``"rectified_flow"``), the network predicting its velocity eps - x_0 with flow matching's
        uniform weight, everything else as :meth:`cpu_demo` (the ``small`` U-Net without attention, T = 500,
        batch 64, lr 1e-3, EMA 0.999). Notebook 11 compares it with the shipped model at equal CPU minutes."""
        flow = dict(schedule="rectified_flow", prediction_type="flow", snr_gamma=None)
        return cls.cpu_demo(**{**flow, **overrides})

    def to_dict(self) -> dict:
        """Plain types only, for a checkpoint loaded with ``weights_only=True``."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """The inverse of :meth:`to_dict`; unknown keys (from newer versions) are ignored."""
        if not isinstance(d, dict):
            raise ValueError(
                f"a training config must be a dict of field values, got {type(d).__name__}"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def resumed_with(self, given: TrainConfig) -> TrainConfig:
        """This (a checkpoint's) config with the fields of ``given`` that may change on resume; raises on any other difference."""
        changed = {
            f.name
            for f in dataclasses.fields(TrainConfig)
            if getattr(self, f.name) != getattr(given, f.name)
        }
        if not given.num_classes:  # not given: the run keeps the classes it found in its data
            changed -= {"num_classes", "class_names"}
        conflicting = sorted(changed - RESUMABLE_OVERRIDES)
        if conflicting:
            detail = ", ".join(
                f"{k}: checkpoint {getattr(self, k)!r} vs now {getattr(given, k)!r}"
                for k in conflicting
            )
            raise ValueError(
                f"cannot resume with a different configuration ({detail}); start a new run folder instead"
            )
        return dataclasses.replace(self, **{k: getattr(given, k) for k in changed})


# The defaults a run starts from (``python -m ddpm_lib.train --preset NAME``): each builds a TrainConfig from overrides.
PRESETS = {
    "paper": TrainConfig,
    "ddpm": TrainConfig.ddpm_demo,
    "cpu": TrainConfig.cpu_demo,
    "flow": TrainConfig.flow_demo,
}

# What TrainConfig.ddpm_demo changes of cpu_demo: the paper's objective and schedule (attention at 16x16, linear
# betas, T = 1000, eps loss). The baseline of benchmarks/recipe.py and benchmarks/ladder.py, and the recipe of
# ddpm_lib/weights/ddpm_toy_cars_32.pt.
CPU_RECIPE_BEFORE_STUDY = dict(
    attention_resolutions=None,
    schedule="linear",
    num_timesteps=1000,
    prediction_type="epsilon",
    snr_gamma=None,
)

# Fields that change only the budget, the logs or the sample grids of a run, never its weights.
BOOKKEEPING_FIELDS = frozenset(
    {"max_steps", "max_minutes", "checkpoint_every", "sample_every", "log_every"}
    | {"num_sample_images", "sample_sampler", "sample_steps", "sample_eta"}
)
# Fields that may change when a run is resumed; every other field must match the checkpoint. lr may
# change so that a diverged run continues from its last checkpoint with a lower learning rate (the
# exact resume would diverge again).
RESUMABLE_OVERRIDES = BOOKKEEPING_FIELDS | {
    "compile",
    "data_root",
    "precision",
    "lr",
    "deterministic",
}
