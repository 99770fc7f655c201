"""The training engine (stage 5 of the series): Algorithm 1 of Ho et al. 2020, made fast and safe.

One engine serves the training notebook (step by step, live progress) and the command line
(``python -m ddpm_lib.train``, long runs, ``torchrun`` for several GPUs or nodes):

- a frozen :class:`~ddpm_lib.config.TrainConfig` whose defaults are the paper's;
- Adam with linear warm-up, gradient clipping, an EMA of the weights (with warm-up) that every
  sample is drawn from;
- the precision chosen by :func:`ddpm_lib.devices.resolve_precision` (measured on CPUs; bf16, or fp16
  with a GradScaler, on CUDA); channels-last memory format; optional torch.compile;
- atomic checkpoints (:mod:`ddpm_lib.checkpoints`) with every RNG state, so a killed run resumes
  exactly; a non-finite loss or weight stops the run before anything is written;
- DistributedDataParallel when launched by torchrun (NCCL on CUDA, gloo on CPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DistributedSampler

from ddpm_lib.build import diffusion_from_config, model_args
from ddpm_lib.checkpoints import (
    CHECKPOINT_NAME,
    LOG_NAME,
    CheckpointError,
    append_log_row,
    check_run_dir,
    check_training_state,
    claim_run_dir,
    load_checkpoint,
    save_atomic,
    state_mismatch,
    truncate_log,
)
from ddpm_lib.checks import check_image_range
from ddpm_lib.config import BOOKKEEPING_FIELDS, TrainConfig
from ddpm_lib.data import ImageTensorDataset, load_dataset
from ddpm_lib.devices import dist_info, init_distributed, resolve_precision, select_device
from ddpm_lib.model_card import (
    add_training,
    data_entry,
    hardware,
    images_fingerprint,
    new_card,
    train_command,
)
from ddpm_lib.outputs import write_atomic
from ddpm_lib.sampling import generate
from ddpm_lib.unet import build_model, count_parameters


class TrainingDiverged(FloatingPointError):
    """The loss or the weights became non-finite; nothing was written after the last good checkpoint."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM stopped :meth:`Trainer.fit` at a step boundary, after saving the checkpoint.

    ``signum`` is the signal's number (a command line exits with 128 + signum), ``step`` the step saved.
    """

    def __init__(self, signum: int, step: int, path: Path | None):
        self.signum, self.step, self.path = signum, step, path
        saved = f"checkpoint saved to {path}" if path else "no run folder, nothing saved"
        super().__init__(
            f"interrupted by {signal.Signals(signum).name} at step {step}; {saved}"
            + ("; continue with --resume (resume=True) and the same --out" if path else "")
        )


@contextlib.contextmanager
def _stop_signals():
    """Within: SIGINT and SIGTERM ask the loop to stop at the next step boundary (the number is appended to
    the yielded list) instead of stopping mid-step; a second signal stops at once (KeyboardInterrupt).

    Only the main thread can install handlers; elsewhere the signals keep their own behaviour.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum, frame):
        if received:
            raise KeyboardInterrupt
        received.append(signum)

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, handler)
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def ema_decay(decay: float, warmup: bool, k: torch.Tensor) -> torch.Tensor:
    """The EMA's decay at update ``k`` (a tensor of update counts, any shape): decay_k = min(decay,
    (1 + k) / (10 + k)) with warm-up, else ``decay``; update 0 copies the weights (AveragedModel)."""
    k = k.to(torch.float64)
    return torch.clamp((1 + k) / (10 + k), max=decay) if warmup else torch.full_like(k, decay)


# ---------------------------------------------------------------------------------- the engine
class Trainer:
    """Train the network with Algorithm 1 (eps or v target, L_simple or Min-SNR) and keep an EMA of it.

    ``Trainer(config, out_dir)`` builds everything; ``resume=True`` continues from
    ``out_dir/checkpoint.pt``. :meth:`train_step` runs one optimiser step on a batch (the notebook
    drives it), :meth:`fit` runs until ``max_steps`` or the time budget with progress, logging,
    sample grids and checkpoints.
    """

    def __init__(
        self,
        config: TrainConfig,
        out_dir: str | os.PathLike | None = None,
        resume: bool = False,
        device: str | torch.device | None = None,
        dataset: ImageTensorDataset | None = None,
        progress: bool = True,
    ):
        self._join_processes(device)
        # checked before any work, claimed (created, locked) once the run is built
        self.out_dir = (
            check_run_dir(out_dir, resume) if self.is_main or out_dir is None else Path(out_dir)
        )
        # held as long as the trainer: no other process trains into the folder
        self._run_lock = None
        ckpt = self._resume_state() if resume else None
        if ckpt is not None:
            config = TrainConfig.from_dict(ckpt["config"]).resumed_with(config)
        self.config = config
        if config.batch_size % self.world_size:
            raise ValueError(
                f"batch_size {config.batch_size} must be divisible by the "
                f"{self.world_size} processes"
            )
        self.local_batch = config.batch_size // self.world_size
        self.progress = progress and self.is_main
        self._choose_kernels()
        # model init is identical on every rank (DDP broadcasts rank 0's)
        torch.manual_seed(config.seed + self.rank)
        self._set_data(dataset if dataset is not None else self._load_data())
        self._build_model()
        self._build_optimizer()
        g = torch.Generator().manual_seed(self.config.seed + 12345)  # fixed noise for the grids
        size = self.config.image_size
        self.fixed_noise = torch.randn(self.config.num_sample_images, 3, size, size, generator=g)
        self.step = 0
        self._stepping = False  # inside train_step: the state is not whole
        self.history: list[dict[str, float]] = []
        if self.is_main and self.out_dir is not None:
            self._run_lock = claim_run_dir(self.out_dir, resume)
        if ckpt is not None:
            self._restore(ckpt)
        self._start_card(ckpt)

    # -------------------------------------------------------------- construction helpers
    def _join_processes(self, device: str | torch.device | None) -> None:
        """Rank, world size and device; under torchrun each process takes its local GPU."""
        self.distributed = init_distributed()
        self.rank, self.world_size, local_rank = dist_info()
        self.is_main = self.rank == 0
        if device is None and self.distributed and torch.cuda.is_available():
            device = f"cuda:{local_rank}"
        self.device = select_device(device)

    def _resume_state(self) -> dict:
        """The run folder's checkpoint, checked to be a whole training state."""
        ckpt = load_checkpoint(self.out_dir / CHECKPOINT_NAME)
        check_training_state(ckpt, self.out_dir / CHECKPOINT_NAME)
        return ckpt

    def _choose_kernels(self) -> None:
        """The fastest CUDA kernels, or deterministic ones for a bit-exact resume (--deterministic).

        cuDNN's autotuner may pick other kernels in a resumed run, so only deterministic kernels
        (which also cover the embedding's atomic adds and cuBLAS's workspace) resume bit for bit.
        """
        if self.device.type != "cuda":
            return
        deterministic = self.config.deterministic
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)

    def _set_data(self, dataset: ImageTensorDataset) -> None:
        """The images (on the GPU when they fit), their classes, and each epoch's shuffled order."""
        cfg = self.config
        # small enough: keep the uint8 images on the GPU
        if self.device.type != "cpu" and dataset.images.numel() < 2**31:
            dataset = ImageTensorDataset(
                dataset.images.to(self.device), dataset.labels, dataset.classes
            )
        if tuple(dataset.images.shape[-2:]) != (cfg.image_size, cfg.image_size):
            raise ValueError(
                f"the dataset's images are {tuple(dataset.images.shape[-2:])} but image_size is "
                f"{cfg.image_size}; load it with image_size={cfg.image_size}"
            )
        self.dataset = dataset
        if cfg.class_cond:
            self.config = cfg = self._with_classes(cfg)
        # which images each process draws in each epoch (PyTorch's meaning of "sampler")
        self.data_sampler = DistributedSampler(
            dataset,
            num_replicas=self.world_size,
            rank=self.rank,
            shuffle=True,
            seed=cfg.seed,
            drop_last=True,
        )
        self.steps_per_epoch = len(self.data_sampler) // self.local_batch
        self._epoch_order: tuple[int, torch.Tensor] = (-1, torch.empty(0, dtype=torch.long))
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"the dataset has {len(dataset)} images, fewer than one batch of "
                f"{cfg.batch_size}; lower batch_size"
            )

    def _build_model(self) -> None:
        """The process, the network (channels-last), its measured precisions and its EMA."""
        cfg = self.config
        self.diffusion = diffusion_from_config(cfg)
        model = build_model(**model_args(cfg)).to(self.device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        shape, batch = (3, cfg.image_size, cfg.image_size), min(self.local_batch, 32)
        self.precision = resolve_precision(
            cfg.precision, self.device, model, "train", shape, batch=batch
        )
        if self.distributed:  # every rank uses rank 0's choice
            choice = [self.precision]
            dist.broadcast_object_list(choice, src=0)
            self.precision = choice[0]
        sample_batch = min(cfg.num_sample_images, 32)
        self.sample_precision = resolve_precision(
            cfg.precision, self.device, model, "sample", shape, batch=sample_batch
        )
        self.ema = AveragedModel(model, multi_avg_fn=self._ema_update, use_buffers=True)
        self.ema.requires_grad_(False)
        self.train_model: nn.Module = model
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if cfg.compile:
            self.train_model = torch.compile(self.train_model)

    def _build_optimizer(self) -> None:
        """Adam or AdamW (fused on a CPU) and the fp16 gradient scaler."""
        cfg = self.config
        opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(
            self.model.parameters(),
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            fused=self.device.type == "cpu" or None,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.name == "fp16")

    def _load_data(self) -> ImageTensorDataset:
        cfg = self.config
        options = (
            {"num_images": cfg.num_images, "seed": cfg.seed} if cfg.dataset == "toy_cars" else {}
        )
        if cfg.dataset == "cifar10":
            options["download"] = self.is_main
        if self.distributed and cfg.dataset == "cifar10" and not self.is_main:
            dist.barrier()  # let rank 0 download first
        ds = load_dataset(
            cfg.dataset,
            image_size=cfg.image_size,
            split="train",
            root=cfg.data_root,
            **{k: v for k, v in options.items() if v is not None},
        )
        if self.distributed and cfg.dataset == "cifar10" and self.is_main:
            dist.barrier()
        return ds

    def _with_classes(self, cfg: TrainConfig) -> TrainConfig:
        """The config with the dataset's classes (a resumed run must see the same ones)."""
        classes = tuple(self.dataset.classes)
        if len(classes) < 2:
            raise ValueError(
                f"class_cond needs labelled data with at least two classes; {cfg.dataset} has {len(classes)} "
                "(an image folder needs one sub-folder per class)"
            )
        if cfg.num_classes and (cfg.num_classes, cfg.class_names) != (len(classes), classes):
            raise ValueError(
                f"the run was trained on {cfg.num_classes} classes {list(cfg.class_names)[:6]}, the data has {len(classes)}"
            )
        return dataclasses.replace(cfg, num_classes=len(classes), class_names=classes)

    def _ema_update(
        self, ema_params: list[torch.Tensor], params: list[torch.Tensor], num_averaged
    ) -> None:
        """EMA with warm-up: decay_k = min(decay, (1 + k) / (10 + k)) after k updates."""
        k = torch.tensor(int(num_averaged))
        decay = ema_decay(self.config.ema_decay, self.config.ema_warmup, k).item()
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
            self.data_sampler.set_epoch(epoch)
            self._epoch_order = (
                epoch,
                torch.tensor(list(iter(self.data_sampler)), dtype=torch.long),
            )
        return self._epoch_order[1][offset * self.local_batch : (offset + 1) * self.local_batch]

    def get_batch(self, step: int) -> torch.Tensor:
        """x_0 for step ``step``: float ``(B, 3, H, W)`` in [-1, 1] on the device, randomly flipped."""
        x = self.dataset.batch(self.batch_indices(step), self.device, flip=True)
        return x.contiguous(memory_format=torch.channels_last) if self.config.channels_last else x

    # -------------------------------------------------------------- training
    def lr_at(self, step: int) -> float:
        """Linear warm-up to ``lr`` over ``warmup_steps``, then constant (the paper's schedule)."""
        w = self.config.warmup_steps
        return self.config.lr * min(1.0, (step + 1) / w) if w else self.config.lr

    def train_step(
        self, x0: torch.Tensor | None = None, labels: torch.Tensor | None = None
    ) -> float:
        """One step of Algorithm 1 (lines 2-6) plus the EMA update; returns the loss (float32).

        A class-conditional run replaces each label ``(B,)`` by the null label with probability ``p_uncond``
        (Ho & Salimans 2022, Algorithm 1), so one network learns the conditional and unconditional model.
        A given ``x0`` is checked here; the config's loss options were checked when it was built.
        """
        start = time.perf_counter()
        cfg = self.config
        if x0 is None:
            x0 = self.get_batch(self.step)
            labels = self.dataset.labels[self.batch_indices(self.step)] if cfg.class_cond else None
        else:
            check_image_range(x0)
        if cfg.class_cond:
            if labels is None:
                raise ValueError(
                    "a class-conditional run needs the batch's labels: train_step(x0, labels)"
                )
            # the CPU RNG: part of the checkpoint, so a resume is exact
            drop = torch.rand(len(labels)) < cfg.p_uncond
            labels = torch.where(drop, cfg.num_classes, labels.cpu().long()).to(self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.train_model.train()
        with self.precision.autocast():
            loss = self.diffusion._training_loss(
                self.train_model, x0, cfg.loss_type, labels=labels, snr_gamma=cfg.snr_gamma
            )
        value = loss.item()
        if not math.isfinite(value):
            self._diverged(f"the loss is {value}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        # fp16's scaler skips such steps by itself
        if not self.scaler.is_enabled() and not torch.isfinite(grad_norm):
            self._diverged(f"the gradient norm is {grad_norm.item()}")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.ema.update_parameters(self.model)
        self.step += 1
        self.train_seconds += time.perf_counter() - start  # the model card's training time
        return value

    def _diverged(self, what: str) -> None:
        ckpt = self.out_dir / CHECKPOINT_NAME if self.out_dir else None
        if ckpt is not None and ckpt.exists():
            kept = f"the checkpoint {ckpt} (step {load_checkpoint(ckpt)['step']}) is kept; continue with --resume and a lower --lr"
        else:
            kept = "no checkpoint was written; start again with a lower --lr" + (
                " in the same folder" if ckpt else ""
            )
        raise TrainingDiverged(
            f"training diverged at step {self.step}: {what}. Nothing was saved after it: {kept} "
            f"(lr now {self.config.lr:g}{'' if self.precision.name == 'fp32' else f'; precision {self.precision.name}, or try fp32'})."
        )

    def weights_finite(self) -> bool:
        """True when every weight of the model and of its EMA is finite (checked before each checkpoint)."""
        return all(
            bool(torch.isfinite(p).all()) for m in (self.model, self.ema) for p in m.parameters()
        )

    def fit(
        self, max_steps: int | None = None, max_minutes: float | None = None, callback=None
    ) -> list[dict[str, float]]:
        """Train until ``max_steps`` (the run's total) or ``max_minutes`` of wall clock, whichever first.

        Writes (main process, when out_dir is set) ``loss.csv``, sample grids ``samples/step_NNNNNN.png``
        every ``sample_every`` steps and at the end, and ``checkpoint.pt`` every ``checkpoint_every``
        steps and at the end. ``callback(trainer, row)`` is called after each logged row. Returns the
        loss history.

        SIGINT (Ctrl-C) or SIGTERM stops the run at the next step boundary: the checkpoint is saved and
        :class:`TrainingInterrupted` raised, so ``resume=True`` continues bit-identically to a run never
        stopped; a second signal stops at once without saving. A KeyboardInterrupt raised otherwise
        (a callback) saves when it falls between steps, and saves nothing inside one.
        """
        cfg = self.config
        max_steps = cfg.max_steps if max_steps is None else max_steps
        max_minutes = cfg.max_minutes if max_minutes is None else max_minutes
        from tqdm.auto import tqdm

        bar = tqdm(
            total=max_steps,
            initial=self.step,
            desc="training",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        signum = 0
        try:
            with _stop_signals() as received:
                signum = self._run_steps(max_steps, max_minutes, callback, bar, received)
        except TrainingDiverged:
            bar.close()
            raise
        except KeyboardInterrupt:  # raised inside the loop: a second signal, a callback, a notebook
            bar.close()
            if (
                self._stepping
            ):  # the weights, the EMA and the optimizer may disagree: nothing is saved
                self._stepping = False
                if self.is_main:
                    print(
                        f"interrupted during step {self.step + 1}: not saved; the last checkpoint is kept"
                    )
                raise
            self.save_checkpoint()
            if self.is_main:
                print(
                    f"interrupted at step {self.step}; checkpoint saved, resume with resume=True / --resume"
                )
            raise
        bar.close()
        path = self.save_checkpoint()
        if signum:
            raise TrainingInterrupted(signum, self.step, path)
        self.save_sample_grid()
        return self.history

    def _run_steps(self, max_steps: int, max_minutes: float | None, callback, bar, received) -> int:
        """The loop of :meth:`fit`; returns the number of a stop signal received (0: none)."""
        cfg = self.config
        start = time.perf_counter()
        window_start, window_steps, window_loss = start, 0, 0.0
        while self.step < max_steps:
            if max_minutes is not None and time.perf_counter() - start > 60 * max_minutes:
                break
            self._stepping = True
            loss = self.train_step()
            self._stepping = False
            bar.update(1)
            window_steps += 1
            window_loss += loss
            if self.step % cfg.log_every == 0 or self.step == max_steps:
                now = time.perf_counter()
                row = {
                    "step": self.step,
                    "loss": window_loss / window_steps,
                    "lr": self.lr_at(self.step - 1),
                    "img_per_s": window_steps * cfg.batch_size / (now - window_start),
                    "elapsed_s": now - start,
                }
                self.history.append(row)
                if self.is_main and self.out_dir:
                    append_log_row(self.out_dir / LOG_NAME, row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['img_per_s']:.0f}")
                window_start, window_steps, window_loss = now, 0, 0.0
                if callback is not None:
                    callback(self, row)
            if cfg.sample_every and self.step % cfg.sample_every == 0:
                self.save_sample_grid()
            if self.step % cfg.checkpoint_every == 0:
                self.save_checkpoint()
            signum = self._signal_received(received)
            if signum:  # a step boundary: the state is whole
                return signum
        return 0

    def _signal_received(self, received: list[int]) -> int:
        """The stop signal this process received (0: none); under torchrun every process agrees (MAX over ranks)."""
        signum = received[0] if received else 0
        if self.distributed:
            comm = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
            flag = torch.tensor([signum], device=comm)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            signum = int(flag.item())
        return signum

    # -------------------------------------------------------------- sampling
    def sample(
        self,
        num_images: int | None = None,
        sampler: str | None = None,
        num_steps: int | None = None,
        eta: float | None = None,
        noise: torch.Tensor | None = None,
        seed: int = 0,
        guidance_scale: float = 0.0,
    ) -> torch.Tensor:
        """Samples from the EMA weights in [-1, 1], ``(N, 3, H, W)`` on the CPU, through :func:`ddpm_lib.sampling.generate`.

        Defaults come from the config (``sample_sampler``, ``sample_steps``, ``sample_eta``,
        ``num_sample_images``); ``noise`` ``(N, 3, H, W)`` fixes x_T. A class-conditional run draws the
        classes in turn (image i of class i mod num_classes) with ``guidance_scale``.
        """
        cfg = self.config
        sampler = sampler or cfg.sample_sampler
        if num_steps is None and sampler == "ddim":
            num_steps = cfg.sample_steps
        num = len(noise) if noise is not None else (num_images or cfg.num_sample_images)
        labels = torch.arange(num) % cfg.num_classes if cfg.class_cond else None
        return generate(
            self.ema.module,
            self.diffusion,
            num,
            cfg.image_size,
            sampler=sampler,
            num_steps=num_steps,
            eta=cfg.sample_eta if eta is None else eta,
            seed=seed,
            x_T=noise,
            precision=self.sample_precision,
            labels=labels,
            guidance_scale=guidance_scale,
        ).images

    def save_sample_grid(self) -> Path | None:
        """Sample from the fixed noise and save a grid to ``out_dir/samples/step_NNNNNN.png``."""
        if not (self.is_main and self.out_dir):
            return None
        from torchvision.utils import save_image

        x = self.sample(noise=self.fixed_noise)
        path = self.out_dir / "samples" / f"step_{self.step:06d}.png"
        nrow = int(math.ceil(math.sqrt(len(x))))
        return write_atomic(path, lambda f: save_image((x + 1) / 2, f, format="png", nrow=nrow))

    # -------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        rng = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        if self.distributed:  # every rank's RNG, so that each resumes exactly
            rng = {k: self._gather(v) for k, v in rng.items()}
        return {
            "step": self.step,
            "config": self.config.to_dict(),
            "model_args": model_args(self.config),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "world_size": self.world_size,
            "model_card": self.model_card(),
        }

    def _start_card(self, ckpt: dict | None) -> None:
        """What the model card keeps of earlier invocations (hardware, time, notes) and of this one's resume."""
        card = (ckpt or {}).get("model_card") or {}
        self._card_sessions = list(card.get("training", {}).get("hardware", []))
        self._card_notes = list(card.get("notes", []))
        self._card_start_step, self.train_seconds, self._images_sha1 = self.step, 0.0, None
        if ckpt is None:
            return
        if not card:
            self._card_notes.append(
                f"steps 1-{self.step} were trained before model cards: their time and hardware are not recorded"
            )
        before = TrainConfig.from_dict(ckpt["config"])
        changed = [
            f"{f.name} {getattr(before, f.name)!r} -> {getattr(self.config, f.name)!r}"
            for f in dataclasses.fields(TrainConfig)
            if f.name not in BOOKKEEPING_FIELDS
            and getattr(before, f.name) != getattr(self.config, f.name)
        ]
        if changed:
            self._card_notes.append(f"resumed at step {self.step} with {', '.join(changed)}")

    def model_card(self) -> dict:
        """The run's model card at this step (:mod:`ddpm_lib.model_card`): recipe, data, time, hardware, command.

        The time counts the seconds spent in :meth:`train_step` (not sample grids or checkpoints).
        """
        cfg = self.config
        if self._images_sha1 is None:
            self._images_sha1 = images_fingerprint(self.dataset.images)
        where = hardware(self.device, self.precision.name, self.world_size)
        steps_here = self.step - self._card_start_step
        return new_card(
            cfg,
            command=train_command(cfg, self.out_dir or "runs/run", self.world_size),
            steps=self.step,
            sessions=add_training(self._card_sessions, where, steps_here, self.train_seconds),
            data=data_entry(cfg, len(self.dataset), self._images_sha1),
            parameters=count_parameters(self.model),
            notes=self._card_notes,
        )

    def _gather(self, state: torch.Tensor) -> torch.Tensor:
        comm_device = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        out = [torch.empty_like(state, device=comm_device) for _ in range(self.world_size)]
        dist.all_gather(out, state.to(comm_device))
        return torch.stack([o.cpu() for o in out])

    def save_checkpoint(self, path: str | os.PathLike | None = None) -> Path | None:
        """Write the full training state atomically (main process only); every process must call it."""
        if not self.weights_finite():
            self._diverged("the weights are no longer finite")
        state = self.state_dict()  # collective under torchrun: all ranks take part
        if not self.is_main or (path is None and self.out_dir is None):
            return None
        path = Path(path) if path is not None else self.out_dir / CHECKPOINT_NAME
        save_atomic(state, path)
        return path

    def _restore(self, ckpt: dict) -> None:
        """Load every part of a training checkpoint; a part that does not fit is one line naming the field."""
        path = self.out_dir / CHECKPOINT_NAME
        for field, module in (("model", self.model), ("ema", self.ema)):
            mismatch = state_mismatch(module.state_dict(), ckpt[field])
            if mismatch:
                raise CheckpointError(
                    f"{path}: its {field!r} does not fit this run's network ({mismatch})"
                )
        if int(ckpt.get("world_size", 1)) != self.world_size:
            raise ValueError(
                f"the checkpoint was written by {ckpt['world_size']} processes, this run has {self.world_size}"
            )
        rng = ckpt["rng"]
        # clone: set_rng_state misreads views
        pick = (lambda v: v[self.rank].clone()) if self.distributed else (lambda v: v)
        parts = {
            "model": lambda: self.model.load_state_dict(ckpt["model"]),
            "ema": lambda: self.ema.load_state_dict(ckpt["ema"]),
            "optimizer": lambda: self._load_optimizer(ckpt["optimizer"]),
            "scaler": lambda: self.scaler.load_state_dict(ckpt.get("scaler", {})),
            "rng": lambda: torch.set_rng_state(pick(rng["cpu"])),
        }
        if "cuda" in rng and self.device.type == "cuda":
            parts["rng (cuda)"] = lambda: torch.cuda.set_rng_state(pick(rng["cuda"]), self.device)
        for field, load in parts.items():
            try:
                load()
            except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
                why = " ".join(str(exc).split())[:300] or type(exc).__name__
                raise CheckpointError(
                    f"{path}: its {field!r} cannot be restored ({why}); the file was edited or damaged, use an earlier copy"
                ) from exc
        self.step = int(ckpt["step"])
        if self.out_dir is not None and self.is_main:
            self.history = truncate_log(self.out_dir / LOG_NAME, self.step)

    def _load_optimizer(self, state: dict) -> None:
        """The optimizer's state, each moment checked against its parameter's shape (torch does not check)."""
        self.optimizer.load_state_dict(state)
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                for name, v in self.optimizer.state.get(p, {}).items():
                    if name != "step" and isinstance(v, torch.Tensor) and v.shape != p.shape:
                        raise ValueError(
                            f"its {name} has shape {tuple(v.shape)}, the parameter {tuple(p.shape)}"
                        )

    def describe(self) -> str:
        cfg = self.config
        ddp = f" (DDP, {dist.get_backend()})" if self.distributed else ""
        return (
            f"{cfg.model} U-Net ({count_parameters(self.model) / 1e6:.2f}M parameters) on {cfg.dataset} {cfg.image_size}px "
            f"({len(self.dataset)} images), batch {cfg.batch_size} on {self.world_size} process(es){ddp}, {self.device}, "
            f"{self.precision}; {cfg.schedule} T={cfg.num_timesteps}, predicts {cfg.prediction_type}"
            f"{f', Min-SNR-{cfg.snr_gamma:g}' if cfg.snr_gamma else ''}; step {self.step}/{cfg.max_steps}"
        )
