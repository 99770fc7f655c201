"""Where the maths runs and in which precision: device choice, measured precision, distributed setup.

The one place that decides the autocast dtype. ``precision="auto"`` means:

- CUDA: bfloat16 where the GPU supports it, else float16 (the trainer adds a GradScaler);
- CPU and Apple MPS: **measured**. The model's own step is timed in float32 and in the reduced
  dtype (bfloat16 on a CPU, float16 on MPS) on a small batch of the real shape; the reduced dtype is
  chosen only when it is at least ``MIN_SPEEDUP`` times faster. CPUs differ wildly here: with
  AVX-512 BF16 or AMX instructions bf16 convolutions are several times faster than fp32, while a
  CPU with AVX2 only emulates bf16 and runs it an order of magnitude slower. The result is cached
  per CPU model and flags, torch version, thread count and model in ``$XDG_CACHE_HOME/ddpm_lib``.

``DDPM_PRECISION=fp32|bf16|fp16`` in the environment, or an explicit ``precision=``, overrides it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn

from ddpm_lib.checks import check_choice
from ddpm_lib.outputs import write_text_atomic

Precision = Literal["auto", "bf16", "fp16", "fp32"]
StepKind = Literal["sample", "train"]
PRECISION_ENV = "DDPM_PRECISION"
MIN_SPEEDUP = 1.2  # the reduced dtype must be at least this much faster than fp32 to be chosen
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
NAMES = {v: k for k, v in DTYPES.items()}


def select_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given (checked to exist), else CUDA, else Apple MPS, else the CPU."""
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device} was asked for but this machine has no CUDA GPU; use --device cpu"
        )
    if (
        device.type == "cuda"
        and device.index is not None
        and device.index >= torch.cuda.device_count()
    ):
        raise ValueError(
            f"device {device} does not exist: this machine has {torch.cuda.device_count()} CUDA GPU(s)"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            "device mps was asked for but Apple's MPS backend is not available here; use --device cpu"
        )
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {device}; use cpu, cuda, cuda:N or mps")
    return device


@dataclass(frozen=True)
class PrecisionChoice:
    """The autocast dtype chosen for one device and model, and why.

    ``name`` is ``"fp32"``, ``"bf16"`` or ``"fp16"``; ``source`` says who decided (``"measured"``,
    ``"cached"``, ``"argument"``, ``"environment"`` or ``"device"``); ``speedup`` is the measured speed of
    the reduced dtype over fp32 (``> 1``: faster), when it was measured.
    """

    name: str
    device_type: str
    source: str
    speedup: float | None = None
    reduced: str | None = None  # the dtype fp32 was measured against

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    def autocast(self):
        """The autocast context for this choice (a no-op for fp32)."""
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def __str__(self) -> str:
        if self.speedup is None:
            return f"{self.name} ({self.source})"
        ratio = (
            f"{self.speedup:.2f}x faster"
            if self.speedup >= 1
            else f"{1 / self.speedup:.1f}x slower"
        )
        return f"{self.name}: {self.reduced} measured {ratio} than fp32 ({self.source})"


CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16")
# native bfloat16 arithmetic; without them bf16 is emulated
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_model_and_flags() -> tuple[str, tuple[str, ...]]:
    """The CPU's model name (``/proc/cpuinfo``, else the platform's) and which of ``CPU_FLAGS`` it has."""
    model, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                flags = set(line.split(":", 1)[1].split())
                break
    return model, tuple(f for f in CPU_FLAGS if f in flags)


def cpu_signature() -> str:
    """The CPU model, its relevant instruction-set flags, torch's kernel level and the thread count."""
    model, flags = cpu_model_and_flags()
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "") + "/" + torch.backends.cpu.get_cpu_capability()
    return f"{model} [{' '.join(flags)}] {isa} {torch.get_num_threads()} threads"


def cache_path() -> Path:
    """``$XDG_CACHE_HOME/ddpm_lib/precision.json`` (``~/.cache/ddpm_lib/...`` when unset)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "ddpm_lib" / "precision.json"


def _model_key(model: nn.Module, example_shape: tuple[int, ...], kind: str) -> str:
    params = sum(p.numel() for p in model.parameters())
    return f"{type(model).__name__}-{params}-{'x'.join(map(str, example_shape))}-{kind}"


def _read_cache() -> dict:
    """The cache file's entries; an unreadable file, or one that is not a JSON object, counts as empty."""
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _cached_speedup(key: str) -> float | None:
    """The speed-up stored under ``key``, or None (re-measure) unless it is a finite number > 0.

    The file is the user's to edit or damage: a list, a string, Infinity, NaN or a negative ratio is
    never trusted.
    """
    entry = _read_cache().get(key)
    speedup = entry.get("speedup") if isinstance(entry, dict) else None
    if isinstance(speedup, bool) or not isinstance(speedup, (int, float)):
        return None
    return float(speedup) if math.isfinite(speedup) and speedup > 0 else None


def _write_cache(key: str, value: dict) -> None:
    path = cache_path()
    with contextlib.suppress(OSError):  # a read-only home only costs a re-measurement next time
        data = _read_cache()
        data[key] = value
        write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True))


def time_step(
    model: nn.Module,
    example_shape: tuple[int, ...],
    kind: StepKind,
    device: torch.device,
    batch: int = 8,
    reps: int = 2,
) -> Callable[[torch.dtype], float]:
    """A timer ``dtype -> seconds`` of one step of ``model`` on a batch of ``example_shape`` ``(C, H, W)``.

    ``"sample"`` times a forward pass without gradients (eval mode); ``"train"`` a forward and backward
    pass (train mode). The best of ``reps`` calls after one warm-up call. The model's gradients, mode
    and the global RNG are left as they were.
    """
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *example_shape, generator=g).to(device)
    t = torch.randint(0, 1000, (batch,), generator=g).to(device)
    if (
        next(model.parameters(), torch.empty(0)).is_contiguous(memory_format=torch.channels_last)
        and x.dim() == 4
    ):
        x = x.contiguous(memory_format=torch.channels_last)

    def call(dtype: torch.dtype) -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            if kind == "sample":
                with torch.no_grad():
                    model(x, t)
            else:
                model(x, t).float().square().mean().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elif device.type == "mps":
            torch.mps.synchronize()

    def timer(dtype: torch.dtype) -> float:
        was_training = model.training
        model.train(kind == "train")
        grads = [p.grad for p in model.parameters()]
        try:
            with torch.random.fork_rng(devices=[]):
                call(dtype)  # warm-up: kernel selection, allocation
                best = float("inf")
                for _ in range(reps):
                    start = time.perf_counter()
                    call(dtype)
                    best = min(best, time.perf_counter() - start)
        finally:
            for p, grad in zip(model.parameters(), grads):
                p.grad = grad
            model.train(was_training)
        return best

    return timer


def measure_speedup(timer: Callable[[torch.dtype], float], reduced: torch.dtype) -> float:
    """Speed of ``reduced`` over fp32 (``> 1``: faster), measured with ``timer`` ``dtype -> seconds``."""
    fp32 = timer(torch.float32)
    return fp32 / max(timer(reduced), 1e-9)


def resolve_precision(
    precision: str = "auto",
    device: str | torch.device = "cpu",
    model: nn.Module | None = None,
    kind: StepKind = "sample",
    example_shape: tuple[int, ...] = (3, 32, 32),
    *,
    batch: int = 16,
    timer: Callable[[torch.dtype], float] | None = None,
    use_cache: bool = True,
) -> PrecisionChoice:
    """The precision every caller uses: an explicit choice, ``$DDPM_PRECISION``, or a measurement.

    ``precision="auto"`` on a CPU or MPS device needs ``model`` (the network whose step is timed for
    ``kind``, with ``batch`` inputs of ``example_shape`` ``(C, H, W)``: pass the batch the caller will run,
    capped at 32, since small batches undervalue bf16); ``timer`` replaces the real timing (tests).
    Raises ``ValueError`` for an unknown name or a dtype the device cannot run.
    """
    check_choice(precision, Precision, "precision")
    device = torch.device(device)
    source = "argument"
    if precision == "auto" and os.environ.get(PRECISION_ENV):
        precision, source = os.environ[PRECISION_ENV], "environment"
        check_choice(precision, Precision, f"precision in ${PRECISION_ENV}")
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise ValueError(
                "precision 'fp16' is for GPUs; on the CPU use 'bf16', 'fp32' or 'auto'"
            )
        if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError(
                f"this GPU ({torch.cuda.get_device_name(device)}) has no bfloat16; use 'fp16', 'fp32' or 'auto'"
            )
        return PrecisionChoice(precision, device.type, source)
    if device.type == "cuda":
        return PrecisionChoice(
            "bf16" if torch.cuda.is_bf16_supported() else "fp16", "cuda", "device"
        )
    reduced = torch.bfloat16 if device.type == "cpu" else torch.float16
    if model is None and timer is None:
        raise ValueError(
            "precision 'auto' on a CPU or MPS is measured on the model: pass model= (or choose fp32/bf16)"
        )
    key = f"{device.type}|{cpu_signature()}|torch {torch.__version__}|{NAMES[reduced]}"
    key += "|" + (
        _model_key(model, (batch, *example_shape), kind) if model is not None else f"timer-{kind}"
    )
    cached = _cached_speedup(key) if use_cache else None
    if cached is not None:
        speedup, source = cached, "cached"
    else:
        if timer is not None:
            speedup = measure_speedup(timer, reduced)
        else:  # a quick look on 4 images first: an emulated dtype (10x slower and more) is refused without the full timing
            speedup = measure_speedup(
                time_step(model, example_shape, kind, device, batch=min(4, batch), reps=1), reduced
            )
            if speedup > 1 / 3:
                speedup = measure_speedup(
                    time_step(model, example_shape, kind, device, batch=batch), reduced
                )
        source = "measured"
        if use_cache:
            _write_cache(
                key, {"speedup": speedup, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}
            )
    name = NAMES[reduced] if speedup >= MIN_SPEEDUP else "fp32"
    return PrecisionChoice(name, device.type, source, speedup, NAMES[reduced])


def device_report(device: torch.device, choice: PrecisionChoice | None = None) -> str:
    """One line on where the maths runs: the GPU's name and memory, or the CPU, plus the precision chosen."""
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        where = f"CUDA GPU {p.name}, {p.total_memory / 2**30:.0f} GiB"
    elif device.type == "mps":
        where = "Apple GPU (MPS)"
    else:
        bf16 = (
            "with bf16 instructions"
            if any(f in cpu_signature() for f in ("avx512_bf16", "amx_bf16"))
            else "without bf16 instructions"
        )
        limit = (
            f", kernels limited to {os.environ['ONEDNN_MAX_CPU_ISA']}"
            if os.environ.get("ONEDNN_MAX_CPU_ISA")
            else ""
        )
        where = f"CPU ({torch.backends.cpu.get_cpu_capability().upper()}, {bf16}{limit}), {torch.get_num_threads()} threads"
    return f"{where}, {choice if choice is not None else 'precision not chosen yet'}, torch {torch.__version__}"


# ---------------------------------------------------------------------------------- distributed
def dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank); (0, 1, 0) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    return 0, 1, 0


def init_distributed() -> bool:
    """Join the process group when launched by torchrun (NCCL on CUDA, gloo on CPU); True if distributed."""
    if not {"RANK", "WORLD_SIZE", "LOCAL_RANK"} <= set(os.environ):  # not launched by torchrun
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
    return True
