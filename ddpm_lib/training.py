"""The training engine (stage 4 of the series): Algorithm 1 of Ho et al. 2020, made fast and safe.

One engine serves the training notebook (step by step, live progress) and the command line
(``python -m ddpm_lib.train``, long runs, ``torchrun`` for several GPUs or nodes):

- a frozen :class:`TrainConfig` whose defaults are the paper's where the paper gives one;
- Adam with linear warm-up, gradient clipping at 1.0, an EMA of the weights (with warm-up) that
  every sample is drawn from;
- mixed precision: bfloat16 autocast on CPU (AMX/AVX-512) and CUDA, float16 with a GradScaler on
  CUDA GPUs without bf16, float32 on request; channels-last memory format; optional torch.compile;
- atomic checkpoints with every RNG state, loaded with ``torch.load(weights_only=True)``, so a
  killed run resumes exactly;
- DistributedDataParallel when launched by torchrun (NCCL on CUDA, gloo on CPU).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DistributedSampler

from ddpm_lib.data import ImageTensorDataset, load_dataset
from ddpm_lib.diffusion import GaussianDiffusion, LossType, Sampler, VarianceType, check_choice
from ddpm_lib.schedules import ScheduleName, make_betas
from ddpm_lib.unet import MODEL_PRESETS, build_model, count_parameters

Precision = Literal["auto", "bf16", "fp16", "fp32"]
Optimizer = Literal["adam", "adamw"]
CHECKPOINT_NAME = "checkpoint.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. Defaults: Ho et al. 2020, CIFAR-10 (Sec. 4, App. B)."""

    # data
    dataset: str = "toy_cars"  # toy_cars | stanford_cars | cifar10 | folder
    data_root: str | None = None  # for stanford_cars (optional), cifar10 (optional), folder (required)
    num_images: int | None = None  # toy_cars only: size of the train split (default 8,144)
    image_size: int = 32
    # model and diffusion
    model: str = "ddpm-cifar10"  # a preset of ddpm_lib.unet.build_model
    dropout: float | None = None  # None keeps the preset's dropout (0.1 in the paper)
    schedule: str = "linear"  # beta_1 = 1e-4 ... beta_T = 0.02
    num_timesteps: int = 1000  # T
    variance_type: str = "fixed_small"  # sigma_t^2 = tilde-beta_t for the samples the engine draws
    loss_type: str = "mse"  # L_simple, Eq. 14
    # optimisation
    batch_size: int = 128  # global batch (split across processes under torchrun)
    lr: float = 2e-4
    warmup_steps: int = 5000  # linear learning-rate warm-up
    optimizer: str = "adam"
    weight_decay: float = 0.0  # for adamw
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    ema_warmup: bool = True  # decay_k = min(ema_decay, (1 + k) / (10 + k)): a useful EMA in short runs too
    # speed
    precision: str = "auto"  # auto: bf16 on CPU and on CUDA GPUs that have it, else fp16 + GradScaler
    channels_last: bool = True
    compile: bool = False  # torch.compile the model (minutes of compilation; pays off on long runs)
    # budget, logging, checkpoints
    max_steps: int = 800_000  # the run's total number of optimiser steps (a resumed run stops here too)
    max_minutes: float | None = None  # wall-clock budget of this invocation
    seed: int = 0
    log_every: int = 10  # loss CSV rows
    sample_every: int = 0  # sample grids from fixed noise (0: only at the end)
    num_sample_images: int = 16
    sample_sampler: str = "ddim"
    sample_steps: int = 50
    sample_eta: float = 1.0
    checkpoint_every: int = 1000

    def __post_init__(self):
        check_choice(self.precision, Precision, "precision")
        check_choice(self.optimizer, Optimizer, "optimizer")
        check_choice(self.loss_type, LossType, "loss_type")
        check_choice(self.variance_type, VarianceType, "variance_type")
        check_choice(self.sample_sampler, Sampler, "sample_sampler")
        check_choice(self.schedule, ScheduleName, "schedule")
        if self.model not in MODEL_PRESETS:
            raise ValueError(f"unknown model {self.model!r}; valid choices: {', '.join(MODEL_PRESETS)}")
        for name in ("batch_size", "max_steps", "num_timesteps", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or not 0 <= self.ema_decay < 1 or self.warmup_steps < 0:
            raise ValueError("lr must be > 0, ema_decay in [0, 1) and warmup_steps >= 0")

    @classmethod
    def cpu_demo(cls, **overrides) -> TrainConfig:
        """The toy-cars configuration for a CPU: the 1.6M-parameter U-Net, a high learning rate."""
        base = dict(model="small", dropout=0.0, batch_size=64, lr=1e-3, warmup_steps=100, ema_decay=0.999,
                    checkpoint_every=250, sample_every=0, log_every=10)  # fmt: skip
        return cls(**{**base, **overrides})


# Fields that may change when a run is resumed; every other field must match the checkpoint.
RESUMABLE_OVERRIDES = frozenset({"max_steps", "max_minutes", "checkpoint_every", "sample_every", "log_every", "num_sample_images",
                                 "sample_sampler", "sample_steps", "sample_eta", "compile", "data_root"})  # fmt: skip


# ---------------------------------------------------------------------------------- devices and precision
def select_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else the first CUDA GPU when there is one, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The autocast dtype for ``precision`` on ``device`` (float32 means no autocast)."""
    check_choice(precision, Precision, "precision")
    if precision == "fp32":
        return torch.float32
    if precision == "fp16":
        if device.type != "cuda":
            raise ValueError("precision 'fp16' needs a CUDA GPU; on the CPU use 'bf16' or 'fp32'")
        return torch.float16
    if precision == "bf16" or device.type == "cpu":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def device_report(device: torch.device | None = None) -> str:
    """One line on what will train: the GPU's name and memory, or the CPU and its bf16 support."""
    device = select_device(device)
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return (
            f"CUDA GPU {p.name}, {p.total_memory / 2**30:.0f} GiB, {resolve_precision('auto', device)} autocast, torch {torch.__version__}"
        )
    isa = torch.backends.cpu.get_cpu_capability()
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads, {isa}), bfloat16 autocast, torch {torch.__version__}"


# ---------------------------------------------------------------------------------- checkpoints
def save_atomic(obj: dict, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers only, never arbitrary code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"refusing to load {path}: it holds Python objects that need arbitrary unpickling, which can run code. "
            "Only checkpoints of tensors and plain containers (as written by ddpm_lib) are accepted."
        ) from exc


def config_from_dict(d: dict) -> TrainConfig:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in d.items() if k in known})


def build_model_from_config(cfg: TrainConfig) -> nn.Module:
    overrides = {} if cfg.dropout is None or cfg.model in ("simple", "resnet18") else {"dropout": cfg.dropout}
    return build_model(cfg.model, image_size=cfg.image_size, **overrides)


def load_ema_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, GaussianDiffusion, TrainConfig]:
    """The EMA model (eval mode, float32), its diffusion and config from a checkpoint or exported weights."""
    ckpt = load_checkpoint(path)
    cfg = config_from_dict(ckpt["config"])
    model = build_model_from_config(cfg)
    state = ckpt["ema"]
    state = {k.removeprefix("module."): v.float() if v.is_floating_point() else v for k, v in state.items() if k != "n_averaged"}
    model.load_state_dict(state)
    diffusion = GaussianDiffusion(make_betas(cfg.schedule, cfg.num_timesteps), cfg.variance_type)
    return model.to(device).eval(), diffusion, cfg


def export_weights(checkpoint: str | os.PathLike, out: str | os.PathLike, dtype: torch.dtype = torch.bfloat16) -> int:
    """Write the EMA weights of ``checkpoint`` in ``dtype`` with its config (a few MB); returns the file size."""
    ckpt = load_checkpoint(checkpoint)
    ema = {k.removeprefix("module."): v.to(dtype) if v.is_floating_point() else v for k, v in ckpt["ema"].items() if k != "n_averaged"}
    save_atomic({"config": ckpt["config"], "ema": ema, "step": ckpt["step"]}, out)
    return Path(out).stat().st_size


# ---------------------------------------------------------------------------------- distributed
def _dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank); (0, 1, 0) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    return 0, 1, 0


def init_distributed() -> bool:
    """Join the process group when launched by torchrun (NCCL on CUDA, gloo on CPU); True if distributed."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) < 2:
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
    return True


# ---------------------------------------------------------------------------------- the engine
class Trainer:
    """Train eps_theta with L_simple (Algorithm 1) and keep an EMA of its weights.

    ``Trainer(config, out_dir)`` builds everything; ``resume=True`` continues from
    ``out_dir/checkpoint.pt``. :meth:`train_step` runs one optimiser step on a batch (the notebook
    drives it), :meth:`fit` runs until ``max_steps`` or the time budget with progress, logging,
    sample grids and checkpoints.
    """

    def __init__(self, config: TrainConfig, out_dir: str | os.PathLike | None = None, resume: bool = False,
                 device: str | torch.device | None = None, dataset: ImageTensorDataset | None = None, progress: bool = True):  # fmt: skip
        self.distributed = init_distributed()
        self.rank, self.world_size, local_rank = _dist_info()
        self.is_main = self.rank == 0
        if device is None and self.distributed and torch.cuda.is_available():
            device = f"cuda:{local_rank}"
        self.device = select_device(device)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        ckpt = None
        if not resume and self.out_dir is not None and any((self.out_dir / f).exists() for f in (CHECKPOINT_NAME, "loss.csv")):
            raise ValueError(f"{self.out_dir} already holds a training run; resume it (resume=True, --resume) or choose another folder")
        if resume:
            if self.out_dir is None:
                raise ValueError("resume=True needs out_dir, the folder that holds checkpoint.pt")
            ckpt = load_checkpoint(self.out_dir / CHECKPOINT_NAME)
            config = self._merge_resumed_config(config_from_dict(ckpt["config"]), config)
        self.config = cfg = config
        if cfg.batch_size % self.world_size:
            raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {self.world_size} processes")
        self.local_batch = cfg.batch_size // self.world_size
        self.progress = progress and self.is_main
        self.autocast_dtype = resolve_precision(cfg.precision, self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        torch.manual_seed(cfg.seed + self.rank)  # model init is identical on every rank (DDP broadcasts rank 0's)

        self.dataset = dataset if dataset is not None else self._load_data()
        self.images = self.dataset.images.to(self.device) if self.dataset.images.numel() < 2**31 else self.dataset.images
        self.sampler = DistributedSampler(
            self.dataset, num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=cfg.seed, drop_last=True
        )
        self.steps_per_epoch = len(self.sampler) // self.local_batch
        self._epoch_order: tuple[int, torch.Tensor] = (-1, torch.empty(0, dtype=torch.long))
        if self.steps_per_epoch < 1:
            raise ValueError(f"the dataset has {len(self.dataset)} images, fewer than one batch of {cfg.batch_size}; lower batch_size")

        self.diffusion = GaussianDiffusion(make_betas(cfg.schedule, cfg.num_timesteps), cfg.variance_type)
        model = build_model_from_config(cfg).to(self.device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.ema = AveragedModel(model, multi_avg_fn=self._ema_update, use_buffers=True)
        self.ema.requires_grad_(False)
        opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.autocast_dtype == torch.float16)
        self.step = 0
        self.train_model: nn.Module = model
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if cfg.compile:
            self.train_model = torch.compile(self.train_model)
        g = torch.Generator().manual_seed(cfg.seed + 12345)  # fixed noise for the sample grids
        self.fixed_noise = torch.randn(cfg.num_sample_images, 3, cfg.image_size, cfg.image_size, generator=g)
        self.history: list[dict[str, float]] = []
        if ckpt is not None:
            self._restore(ckpt)

    # -------------------------------------------------------------- construction helpers
    def _load_data(self) -> ImageTensorDataset:
        cfg = self.config
        options = {"num_images": cfg.num_images, "seed": cfg.seed} if cfg.dataset == "toy_cars" else {}
        if cfg.dataset == "cifar10":
            options["download"] = self.is_main
        if self.distributed and cfg.dataset == "cifar10" and not self.is_main:
            dist.barrier()  # let rank 0 download first
        ds = load_dataset(cfg.dataset, image_size=cfg.image_size, split="train", root=cfg.data_root,
                          **{k: v for k, v in options.items() if v is not None})  # fmt: skip
        if self.distributed and cfg.dataset == "cifar10" and self.is_main:
            dist.barrier()
        return ds

    @staticmethod
    def _merge_resumed_config(saved: TrainConfig, given: TrainConfig) -> TrainConfig:
        changed = {f.name for f in dataclasses.fields(TrainConfig) if getattr(saved, f.name) != getattr(given, f.name)}
        conflicting = sorted(changed - RESUMABLE_OVERRIDES)
        if conflicting:
            detail = ", ".join(f"{k}: checkpoint {getattr(saved, k)!r} vs now {getattr(given, k)!r}" for k in conflicting)
            raise ValueError(f"cannot resume with a different configuration ({detail}); start a new run folder instead")
        return dataclasses.replace(saved, **{k: getattr(given, k) for k in changed})

    def _ema_update(self, ema_params: list[torch.Tensor], params: list[torch.Tensor], num_averaged) -> None:
        """EMA with warm-up: decay_k = min(decay, (1 + k) / (10 + k)) after k updates."""
        k = int(num_averaged)
        decay = min(self.config.ema_decay, (1 + k) / (10 + k)) if self.config.ema_warmup else self.config.ema_decay
        floats = [(e, p) for e, p in zip(ema_params, params) if e.is_floating_point()]
        if floats:
            torch._foreach_lerp_([e for e, _ in floats], [p for _, p in floats], 1 - decay)
        for e, p in zip(ema_params, params):
            if not e.is_floating_point():
                e.copy_(p)

    # -------------------------------------------------------------- data
    def batch_indices(self, step: int) -> torch.Tensor:
        """This process's dataset indices for optimiser step ``step``: epoch-wise shuffles fixed by the seed."""
        epoch, offset = divmod(step, self.steps_per_epoch)
        if self._epoch_order[0] != epoch:
            self.sampler.set_epoch(epoch)
            self._epoch_order = (epoch, torch.tensor(list(iter(self.sampler)), dtype=torch.long))
        return self._epoch_order[1][offset * self.local_batch : (offset + 1) * self.local_batch]

    def get_batch(self, step: int) -> torch.Tensor:
        """x_0 for step ``step``: float ``(B, 3, H, W)`` in [-1, 1] on the device, randomly flipped."""
        idx = self.batch_indices(step)
        x = self.images[idx.to(self.images.device)].to(self.device, non_blocking=True).float().div_(127.5).sub_(1.0)
        flip = torch.rand(len(idx), device="cpu") < 0.5
        x = torch.where(flip.to(self.device).view(-1, 1, 1, 1), x.flip(-1), x)
        return x.contiguous(memory_format=torch.channels_last) if self.config.channels_last else x

    # -------------------------------------------------------------- training
    def lr_at(self, step: int) -> float:
        """Linear warm-up to ``lr`` over ``warmup_steps``, then constant (the paper's schedule)."""
        w = self.config.warmup_steps
        return self.config.lr * min(1.0, (step + 1) / w) if w else self.config.lr

    def train_step(self, x0: torch.Tensor | None = None) -> float:
        """One step of Algorithm 1 (lines 2-6) plus the EMA update; returns the loss (float32)."""
        if x0 is None:
            x0 = self.get_batch(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.train_model.train()
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype != torch.float32):
            loss = self.diffusion.training_loss(self.train_model, x0, self.config.loss_type)
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(
                f"the loss is {value} at step {self.step}; stopping without saving, so the last good checkpoint "
                f"({self.out_dir / CHECKPOINT_NAME if self.out_dir else 'none'}) is kept. Lower lr or use precision='fp32'."
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.ema.update_parameters(self.model)
        self.step += 1
        return value

    def fit(self, max_steps: int | None = None, max_minutes: float | None = None, callback=None) -> list[dict[str, float]]:
        """Train until ``max_steps`` (the run's total) or ``max_minutes`` of wall clock, whichever first.

        Writes (main process, when out_dir is set) ``loss.csv``, sample grids ``samples/step_NNNNNN.png``
        every ``sample_every`` steps and at the end, and ``checkpoint.pt`` every ``checkpoint_every``
        steps, at the end and on KeyboardInterrupt. ``callback(trainer, row)`` is called after each logged
        row. Returns the loss history.
        """
        cfg = self.config
        max_steps = cfg.max_steps if max_steps is None else max_steps
        max_minutes = cfg.max_minutes if max_minutes is None else max_minutes
        from tqdm.auto import tqdm

        bar = tqdm(total=max_steps, initial=self.step, desc="training", disable=not self.progress, dynamic_ncols=True)
        start = time.perf_counter()
        window_start, window_steps, window_loss = start, 0, 0.0
        try:
            while self.step < max_steps:
                if max_minutes is not None and time.perf_counter() - start > 60 * max_minutes:
                    break
                loss = self.train_step()
                bar.update(1)
                window_steps += 1
                window_loss += loss
                if self.step % cfg.log_every == 0 or self.step == max_steps:
                    now = time.perf_counter()
                    row = {"step": self.step, "loss": window_loss / window_steps, "lr": self.lr_at(self.step - 1),
                           "img_per_s": window_steps * cfg.batch_size / (now - window_start), "elapsed_s": now - start}  # fmt: skip
                    self.history.append(row)
                    self._append_csv(row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['img_per_s']:.0f}")
                    window_start, window_steps, window_loss = now, 0, 0.0
                    if callback is not None:
                        callback(self, row)
                if cfg.sample_every and self.step % cfg.sample_every == 0:
                    self.save_sample_grid()
                if self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
        except KeyboardInterrupt:
            self.save_checkpoint()
            bar.close()
            if self.is_main:
                print(f"interrupted at step {self.step}; checkpoint saved, resume with resume=True / --resume")
            raise
        bar.close()
        self.save_checkpoint()
        self.save_sample_grid()
        return self.history

    def _append_csv(self, row: dict[str, float]) -> None:
        if not (self.is_main and self.out_dir):
            return
        path = self.out_dir / "loss.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)

    # -------------------------------------------------------------- sampling
    def sample(self, num_images: int | None = None, sampler: str | None = None, num_steps: int | None = None,
               eta: float | None = None, noise: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:  # fmt: skip
        """Samples from the EMA weights in [-1, 1], ``(N, 3, H, W)`` on the CPU (bf16 autocast where training uses it)."""
        cfg = self.config
        sampler = sampler or cfg.sample_sampler
        if sampler == "ddpm":
            num_steps = None
        else:
            num_steps = num_steps or cfg.sample_steps
        eta = cfg.sample_eta if eta is None else eta
        shape = (num_images or cfg.num_sample_images, 3, cfg.image_size, cfg.image_size)
        g = torch.Generator(self.device).manual_seed(seed)
        x_T = noise.to(self.device) if noise is not None else None
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype != torch.float32):
            x = self.diffusion.sample(self.ema.module, shape if x_T is None else tuple(x_T.shape), sampler, num_steps, eta,
                                      generator=g, x_T=x_T, device=self.device)  # fmt: skip
        return x.float().cpu()

    def save_sample_grid(self) -> Path | None:
        """Sample from the fixed noise and save a grid to ``out_dir/samples/step_NNNNNN.png``."""
        if not (self.is_main and self.out_dir):
            return None
        from torchvision.utils import save_image

        x = self.sample(noise=self.fixed_noise)
        path = self.out_dir / "samples" / f"step_{self.step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image((x + 1) / 2, path, nrow=int(math.ceil(math.sqrt(len(x)))))
        return path

    # -------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        rng = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        if self.distributed:  # every rank's RNG, so that each resumes exactly
            rng = {k: self._gather(v) for k, v in rng.items()}
        return {
            "step": self.step,
            "config": dataclasses.asdict(self.config),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "world_size": self.world_size,
        }

    def _gather(self, state: torch.Tensor) -> torch.Tensor:
        comm_device = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        out = [torch.empty_like(state, device=comm_device) for _ in range(self.world_size)]
        dist.all_gather(out, state.to(comm_device))
        return torch.stack([o.cpu() for o in out])

    def save_checkpoint(self, path: str | os.PathLike | None = None) -> Path | None:
        """Write the full training state atomically (main process only); every process must call it."""
        state = self.state_dict()  # collective under torchrun: all ranks take part
        if not self.is_main or (path is None and self.out_dir is None):
            return None
        path = Path(path) if path is not None else self.out_dir / CHECKPOINT_NAME
        save_atomic(state, path)
        return path

    def _restore(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.step = int(ckpt["step"])
        if int(ckpt.get("world_size", 1)) != self.world_size:
            raise ValueError(f"the checkpoint was written by {ckpt['world_size']} processes, this run has {self.world_size}")
        rng = ckpt["rng"]
        pick = (lambda v: v[self.rank].clone()) if self.distributed else (lambda v: v)  # clone: set_rng_state misreads views
        torch.set_rng_state(pick(rng["cpu"]))
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(pick(rng["cuda"]), self.device)
        if self.out_dir is not None and self.is_main:
            self._truncate_csv()

    def _truncate_csv(self) -> None:
        """Drop loss rows logged after the checkpoint (a killed run wrote them; the resumed run repeats those steps)."""
        path = self.out_dir / "loss.csv"
        if not path.exists():
            return
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(float(r["step"])) <= self.step]
        tmp = path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            if rows:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
        os.replace(tmp, path)
        self.history = [{k: float(v) for k, v in r.items()} for r in rows]

    def describe(self) -> str:
        cfg = self.config
        return (f"{cfg.model} U-Net ({count_parameters(self.model) / 1e6:.2f}M parameters) on {cfg.dataset} {cfg.image_size}px "
                f"({len(self.dataset)} images), batch {cfg.batch_size} on {self.world_size} process(es), {self.device}, "
                f"{str(self.autocast_dtype).removeprefix('torch.')}, step {self.step}/{cfg.max_steps}")  # fmt: skip
