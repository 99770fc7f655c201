"""Bad input never yields a silent wrong result: one row per input, and the message it must produce.

Rows of the command lines (``python -m ddpm_lib.train``, ``python -m ddpm_lib.sample``) must exit with
status 2 and an ``error: ...`` line on stderr, never a traceback, and write nothing. Rows of the library
must raise the given exception with a message that says what was wrong. One tiny run, trained once
for the module, provides the checkpoints that rows load, resume or corrupt.
"""

import re
import shlex
import shutil
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_lib import evaluate as evaluate_cli
from ddpm_lib import sample as sample_cli
from ddpm_lib import toy_cars
from ddpm_lib import train as train_cli
from ddpm_lib.checkpoints import (
    CHECKPOINT_NAME,
    LOCK_NAME,
    WEIGHTS_DIR,
    CheckpointError,
    export_weights,
    load_checkpoint,
    load_ema_model,
)
from ddpm_lib.checks import env_flag
from ddpm_lib.config import TrainConfig
from ddpm_lib.data import DatasetUnavailableError, ImageTensorDataset, load_dataset
from ddpm_lib.devices import resolve_precision, select_device
from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.sampling import generate
from ddpm_lib.schedules import make_betas
from ddpm_lib.training import Trainer

T = 20  # the tiny run's number of timesteps
COND_MODEL = WEIGHTS_DIR / "pretrained_toy_cars_cond_32.pt"  # class-conditional, T = 1000
TINY = f"--model tiny --image-size 16 --batch-size 8 --num-timesteps {T} --precision fp32 --device cpu --no-progress --log-every 1 "
TINY += "--num-sample-images 1 --sample-steps 1 --max-steps 2"  # a one-image, one-step sample grid at the end
SAMPLE = "--precision fp32 --device cpu --num-samples 1 --steps 1"
# the warning that precedes the error
SKIPPED_IMAGES = pytest.mark.filterwarnings("ignore:skipped 1 image")
NO_GPU = pytest.mark.skipif(
    torch.cuda.is_available(), reason="this row needs a machine without a CUDA GPU"
)


def zero_model(x_t, t):
    return torch.zeros_like(x_t)


def one_channel(x_t, t):
    """A network that forgot two of the three colour channels: ``(B, 1, H, W)``."""
    return torch.zeros_like(x_t[:, :1])


class CondZero:
    """A class-conditional network (two classes) that predicts no noise."""

    num_classes = 2

    def __call__(self, x_t, t, y=None):
        return torch.zeros_like(x_t)


class CondOneChannel(CondZero):
    def __call__(self, x_t, t, y=None):
        return torch.zeros_like(x_t[:, :1])


LABELS = torch.tensor([0, 1])
ONE_CHANNEL = r"model returned shape \(2, 1, 8, 8\), expected x_t's shape \(2, 3, 8, 8\)"


def diffusion() -> GaussianDiffusion:
    return GaussianDiffusion(make_betas("linear", T))


# ---------------------------------------------------------------------------------- the inputs
@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> SimpleNamespace:
    """A tiny trained run (T=20, 2 steps), its exported weights, and files that are checkpoints in name only."""
    root = tmp_path_factory.mktemp("bad_inputs")
    run = root / "run"
    argv = shlex.split(f"{TINY} --num-images 64 --out {run}")
    assert train_cli.main(argv) == 0
    ckpt = run / CHECKPOINT_NAME
    weights = root / "weights.pt"
    export_weights(ckpt, weights)
    p = SimpleNamespace(root=root, run=run, ckpt=ckpt, weights=weights, marker=root / "pwned")
    p.file = root / "a_file"
    p.file.write_text("a file, not a folder")
    p.empty = root / "empty"
    p.empty.mkdir()
    # a run folder whose checkpoint.pt holds exported weights
    p.exported_run = root / "exported_run"
    p.exported_run.mkdir()
    shutil.copy(weights, p.exported_run / CHECKPOINT_NAME)
    # float TIFFs outside [0, 1]: no way to tell their brightness
    p.float_images = root / "float_images"
    p.float_images.mkdir()
    Image.fromarray(np.full((8, 8), 3.5, np.float32)).save(p.float_images / "hdr.tif")

    def bad(name: str, content: bytes) -> Path:
        path = root / name
        path.write_bytes(content)
        return path

    data = ckpt.read_bytes()
    p.empty_pt = bad("empty.pt", b"")
    p.text_pt = bad("text.pt", b"step: 2\nweights: somewhere else\n")
    p.random_pt = bad("random.pt", np.random.default_rng(0).bytes(4096))
    p.truncated_pt = bad("truncated.pt", data[: len(data) // 2])
    # zero 32 bytes inside the largest tensor: a damaged copy, still a valid zip
    with zipfile.ZipFile(weights) as archive:
        largest = max(archive.infolist(), key=lambda info: info.file_size)
    damaged = bytearray(weights.read_bytes())
    # local header
    name_len, extra_len = struct.unpack(
        "<HH", damaged[largest.header_offset + 26 : largest.header_offset + 30]
    )
    start = largest.header_offset + 30 + name_len + extra_len + largest.file_size // 2
    damaged[start : start + 32] = bytes(32)
    p.flipped_pt = bad("flipped.pt", bytes(damaged))
    p.list_pt = root / "list.pt"
    torch.save([1, 2, 3], p.list_pt)
    p.evil_pt = root / "evil.pt"
    torch.save({"config": {}, "ema": {}, "payload": _Payload(p.marker)}, p.evil_pt)

    exported = torch.load(weights, weights_only=True)

    def edited(name: str, **changes) -> Path:
        path = root / name
        torch.save({**exported, **changes}, path)
        return path

    ema, cfg, args = exported["ema"], exported["config"], exported["model_args"]
    p.args_preset_pt = edited("args_preset.pt", model_args={**args, "preset": "small"})
    p.args_size_pt = edited("args_size.pt", config={**cfg, "image_size": 32})
    p.args_extra_pt = edited("args_extra.pt", model_args={**args, "width": 3})
    p.other_model_pt = edited("other_model.pt", config={**cfg, "model": "small"}, model_args=None)
    p.ema_shape_pt = edited(
        "ema_shape.pt", ema={k: v[:1] if v.dim() else v for k, v in ema.items()}
    )
    p.ema_nan_pt = edited(
        "ema_nan.pt",
        ema={
            k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
            for k, v in ema.items()
        },
    )
    p.config_str_pt = edited("config_str.pt", config="tiny")
    p.config_bad_pt = edited("config_bad.pt", config={**cfg, "num_timesteps": 0})
    p.step_negative_pt = edited("step_negative.pt", step=-1)
    # outputs that are inputs: a checkpoint named like a sample batch, and a second name for it
    p.weights_npz = root / "weights.npz"
    shutil.copy(weights, p.weights_npz)
    p.alias_npz = root / "alias.npz"
    p.alias_npz.symlink_to(p.weights_npz)
    p.samples_npz = root / "samples.npz"
    np.savez(p.samples_npz, arr_0=np.zeros((12, 16, 16, 3), np.uint8))
    # a folder of someone else's files
    p.foreign = root / "foreign"
    (p.foreign / "samples").mkdir(parents=True)
    (p.foreign / "loss.csv").write_text("epoch,accuracy\n1,0.5\n")
    (p.foreign / "samples" / "mine.png").write_bytes(b"not ours")
    _tampered_runs(p, root)
    return p


def _tampered_runs(p: SimpleNamespace, root: Path) -> None:
    """Copies of the run folder whose training checkpoint has one field edited: ``p.tampered_<name>``."""
    full = torch.load(p.ckpt, weights_only=True)
    model, opt = full["model"], full["optimizer"]
    first = next(k for k, v in model.items() if v.dim() == 4)
    moment = {i: {**s, "exp_avg": s["exp_avg"][:1]} for i, s in opt["state"].items()}
    edits = {
        "step_huge": dict(step=10**12),
        "step_text": dict(step="2"),
        "model_shape": dict(model={**model, first: model[first][:1]}),
        "model_nan": dict(model={**model, first: torch.full_like(model[first], float("nan"))}),
        "ema_shape": dict(ema={k: v[:1] if v.dim() else v for k, v in full["ema"].items()}),
        "optimizer_list": dict(optimizer=[1, 2]),
        "optimizer_moment": dict(optimizer={**opt, "state": moment}),
        "rng_text": dict(rng="seed 0"),
        "rng_short": dict(rng={"cpu": full["rng"]["cpu"][:100]}),
        "world_size_text": dict(world_size="1"),
    }
    for name, change in edits.items():
        folder = root / f"tampered_{name}"
        shutil.copytree(p.run, folder)
        torch.save({**full, **change}, folder / CHECKPOINT_NAME)
        setattr(p, f"tampered_{name}", folder)


class _Payload:
    """Unpickling this would create ``marker``: code that runs on load."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ---------------------------------------------------------------------------------- the table
def train(name: str, argv: str, match: str, env: dict | None = None, marks=()):
    """A row of ``python -m ddpm_lib.train``: ``argv`` is formatted with the fixture's paths, ``{tmp}`` and ``{tiny}``."""
    return pytest.param("train", argv, match, None, env, id=f"train {name}", marks=marks)


def sample(name: str, argv: str, match: str, env: dict | None = None, marks=()):
    """A row of ``python -m ddpm_lib.sample``; ``{sample}`` is a one-image, one-step fp32 run on the CPU."""
    return pytest.param("sample", argv, match, None, env, id=f"sample {name}", marks=marks)


def evaluate(name: str, argv: str, match: str, marks=()):
    """A row of ``python -m ddpm_lib.evaluate`` (refused before any sampling or scoring)."""
    return pytest.param("evaluate", argv, match, None, None, id=f"evaluate {name}", marks=marks)


def toy(name: str, argv: str, match: str):
    """A row of ``python -m ddpm_lib.toy_cars``."""
    return pytest.param("toy_cars", argv, match, None, None, id=f"toy_cars {name}")


def call(
    name: str,
    fn: Callable,
    error: type[BaseException],
    match: str,
    env: dict | None = None,
    marks=(),
):
    """A row of the library: ``fn(paths)`` must raise ``error`` with a message matching ``match``."""
    return pytest.param("call", fn, match, error, env, id=name, marks=marks)


def config(name: str, fields: dict, match: str):
    """A row of :class:`TrainConfig`: building it with ``fields`` must raise ``ValueError``."""
    return call(f"config {name}", lambda p: TrainConfig(**fields), ValueError, match)


NUMBER = "must be a finite number"
# fmt: off
ROWS = [
    # TrainConfig: every field checked when the config is built, before any data loads
    config("grad_clip 0", dict(grad_clip=0), rf"grad_clip {NUMBER} > 0, got 0"),
    config("grad_clip -1", dict(grad_clip=-1), rf"grad_clip {NUMBER} > 0, got -1"),
    config("lr 0", dict(lr=0), rf"lr {NUMBER} > 0 and <= 1, got 0"),
    config("lr nan", dict(lr=float("nan")), rf"lr {NUMBER} > 0 and <= 1, got nan"),
    config("lr as text", dict(lr="1e-3"), r"lr must be a number, got '1e-3'"),
    config("ema_decay 1", dict(ema_decay=1), rf"ema_decay {NUMBER} >= 0 and < 1, got 1"),
    config("warmup_steps -1", dict(warmup_steps=-1), r"warmup_steps must be >= 0, got -1"),
    config("batch_size 0", dict(batch_size=0), r"batch_size must be >= 1, got 0"),
    config("batch_size True", dict(batch_size=True), r"batch_size must be an integer, got True"),
    config("image_size 4", dict(image_size=4), r"image_size must be >= 8, got 4"),
    config("image_size 32.0", dict(image_size=32.0), r"image_size must be an integer, got 32.0"),
    config("num_timesteps 0", dict(num_timesteps=0), r"num_timesteps must be >= 1, got 0"),
    config("sample_steps > T", dict(num_timesteps=T, sample_steps=50), rf"sample_steps must be in \[1, {T}\], got 50"),
    config("sample_eta 2", dict(sample_eta=2), rf"sample_eta {NUMBER} >= 0 and <= 1, got 2"),
    config("dropout 1", dict(dropout=1), rf"dropout {NUMBER} >= 0 and < 1, got 1"),
    config("max_minutes 0", dict(max_minutes=0), rf"max_minutes {NUMBER} > 0, got 0"),
    config("weight_decay -1", dict(weight_decay=-1), rf"weight_decay {NUMBER} >= 0, got -1"),
    config("channels_last 'no'", dict(channels_last="no"), r"channels_last must be True or False, got 'no'"),
    config("compile 1", dict(compile=1), r"compile must be True or False, got 1"),
    config("data_root 5", dict(data_root=5), r"data_root must be a path \(str or pathlib.Path\), got 5"),
    config("dataset mnist", dict(dataset="mnist"), r"unknown dataset 'mnist'; valid choices: toy_cars, stanford_cars, cifar10, folder"),
    config("model giant", dict(model="giant"), r"unknown model 'giant'; valid choices: ddpm-cifar10, .*tiny"),
    config("precision int8", dict(precision="int8"), r"unknown precision 'int8'; valid choices: auto, bf16, fp16, fp32"),
    config("schedule exp", dict(schedule="exp"), r"unknown schedule 'exp'; valid choices: linear, cosine"),
    config("optimizer sgd", dict(optimizer="sgd"), r"unknown optimizer 'sgd'; valid choices: adam, adamw"),
    config("folder without root", dict(dataset="folder"), r"dataset 'folder' needs data_root \(--data-root\)"),
    config("num_images of cifar10", dict(dataset="cifar10", num_images=10), r"num_images sets the size of the generated toy_cars"),
    call("config from a list", lambda p: TrainConfig.from_dict([1, 2]), ValueError, r"a training config must be a dict .*got list"),

    # python -m ddpm_lib.train
    train("--out ''", "{tiny} --out ''", r"the run folder \(--out\) is an empty string"),
    train("--out a file", "{tiny} --out {file}", r"the run folder .*a_file is a file; choose a folder"),
    train("--out under a file", "{tiny} --out {file}/run", r"cannot write to the run folder .*a_file/run: Not a directory"),
    train("--lr 1e6", "{tiny} --out {tmp}/r --lr 1e6", rf"error: lr {NUMBER} > 0 and <= 1, got 1000000"),
    train("--grad-clip 0", "{tiny} --out {tmp}/r --grad-clip 0", rf"error: grad_clip {NUMBER} > 0, got 0"),
    train("--sample-steps > T", "{tiny} --out {tmp}/r --sample-steps 50", rf"sample_steps must be in \[1, {T}\], got 50"),
    train("--num-timesteps 1.5", "{tiny} --out {tmp}/r --num-timesteps 1.5", r"argument --num-timesteps: invalid int value: '1.5'"),
    train("--dataset mnist", "{tiny} --out {tmp}/r --dataset mnist", r"argument --dataset: invalid choice: 'mnist'"),
    train("--precision fp16 on a CPU", "{tiny} --num-images 16 --out {tmp}/r --precision fp16", r"'fp16' is for GPUs; on the CPU"),
    train("$DDPM_PRECISION fp8", "{tiny} --num-images 16 --out {tmp}/r --precision auto", r"unknown precision in \$DDPM_PRECISION 'fp8'",
          env={"DDPM_PRECISION": "fp8"}),
    train("--device cuda without a GPU", "{tiny} --out {tmp}/r --device cuda", r"has no CUDA GPU; use --device cpu", marks=NO_GPU),
    train("a batch larger than the data", "{tiny} --num-images 4 --out {tmp}/r", r"the dataset has 4 images, fewer than one batch of 8"),
    train("resnet18 at 16px", "{tiny} --num-images 8 --model resnet18 --out {tmp}/r", r"model 'resnet18' needs image_size divisible by 32"),
    train("--resume, no checkpoint", "{tiny} --out {empty} --resume", r"no checkpoint at .*empty/checkpoint.pt"),
    train("--resume from exported weights", "{tiny} --out {exported_run} --resume", r"holds exported weights \(for sampling\)"),
    train("--resume with another model", "{tiny} --num-images 64 --out {run} --resume --image-size 32",
          r"cannot resume with a different configuration \(image_size: checkpoint 16 vs now 32\)"),
    train("a new run in a run's folder", "{tiny} --out {run}", r"already holds a training run; resume it .*--resume"),
    train("folder of no images", "{tiny} --out {tmp}/r --dataset folder --data-root {empty}", r"image folder .*empty holds no image files"),
    train("folder of unscalable floats", "{tiny} --out {tmp}/r --dataset folder --data-root {float_images}",
          r"no readable images .*hdr.tif \(mode F .*only floats in \[0, 1\] can be scaled", marks=SKIPPED_IMAGES),
    train("Stanford Cars, bad root", "{tiny} --out {tmp}/r --dataset stanford_cars --data-root {empty}",
          r"Stanford Cars is not available: .*empty does not contain car_data"),

    # python -m ddpm_lib.sample
    sample("--eta nan", "{sample} --eta nan --out {tmp}/s.png", rf"error: eta {NUMBER} >= 0 and <= 1, got nan"),
    sample("--eta -1", "{sample} --eta -1 --out {tmp}/s.png", rf"error: eta {NUMBER} >= 0 and <= 1, got -1"),
    sample("--eta 2", "{sample} --eta 2 --out {tmp}/s.png", rf"error: eta {NUMBER} >= 0 and <= 1, got 2"),
    sample("--steps 50 > T", "{sample} --steps 50 --out {tmp}/s.png", rf"steps of ddim, at most T={T}\) must be in \[1, {T}\], got 50"),
    sample("--steps with ddpm", "{sample} --sampler ddpm --steps 5 --out {tmp}/s.png", rf"the ddpm sampler runs all T={T} steps"),
    sample("--num-samples 0", "{sample} --num-samples 0 --out {tmp}/s.png", r"num_samples must be >= 1, got 0"),
    sample("--batch-size 0", "{sample} --batch-size 0 --out {tmp}/s.png", r"batch_size must be >= 1, got 0"),
    sample("--out ''", "{sample} --out ''", r"--out is empty; give a file name ending in .png or .npz"),
    sample("--out .jpg", "{sample} --out {tmp}/s.jpg", r"--out must end in .png or .npz, got .*s.jpg"),
    sample("--out a folder", "{sample} --out {empty}", r"--out must end in .png or .npz"),
    sample("--out under a file", "{sample} --out {file}/s.png", r"cannot write --out .*a_file/s.png: .*a_file is a file, not a folder"),
    sample("--device cuda without a GPU", "{sample} --device cuda --out {tmp}/s.png", r"has no CUDA GPU; use --device cpu", marks=NO_GPU),
    sample("--device tpu", "{sample} --device tpu --out {tmp}/s.png", r"unknown device 'tpu'; use cpu, cuda, cuda:N or mps"),
    sample("--precision fp16 on a CPU", "{sample} --precision fp16 --out {tmp}/s.png", r"precision 'fp16' is for GPUs"),
    sample("$DDPM_PRECISION FP32", "{sample} --precision auto --out {tmp}/s.png", r"unknown precision in \$DDPM_PRECISION 'FP32'",
           env={"DDPM_PRECISION": "FP32"}),
    sample("--sampler lms", "{sample} --sampler lms --out {tmp}/s.png", r"argument --sampler: invalid choice: 'lms'"),
    sample("missing checkpoint", "{sample} --checkpoint {tmp}/none.pt --out {tmp}/s.png", r"no checkpoint at .*none.pt"),
    sample("a run folder as checkpoint", "{sample} --checkpoint {run} --out {tmp}/s.png", r"run is a folder, not a checkpoint file; did"),
    sample("empty file", "{sample} --checkpoint {empty_pt} --out {tmp}/s.png", r"empty.pt is empty \(0 bytes\): not a checkpoint"),
    sample("text file", "{sample} --checkpoint {text_pt} --out {tmp}/s.png", r"text.pt is not a checkpoint: torch.save files are zip"),
    sample("random bytes", "{sample} --checkpoint {random_pt} --out {tmp}/s.png", r"random.pt is not a checkpoint"),
    sample("truncated", "{sample} --checkpoint {truncated_pt} --out {tmp}/s.png", r"truncated.pt is not a checkpoint: .*truncated"),
    sample("damaged bytes", "{sample} --checkpoint {flipped_pt} --out {tmp}/s.png", r"flipped.pt is corrupt: .* fails its checksum"),
    sample("a list", "{sample} --checkpoint {list_pt} --out {tmp}/s.png", r"list.pt is not a ddpm_lib checkpoint: it holds list"),
    sample("a malicious pickle", "{sample} --checkpoint {evil_pt} --out {tmp}/s.png", r"refusing to load .*evil.pt: it holds Python"),
    sample("model_args edited", "{sample} --checkpoint {args_preset_pt} --out {tmp}/s.png",
           r"contradicts itself: its model_args say preset 'small' vs config 'tiny'"),
    sample("config image_size edited", "{sample} --checkpoint {args_size_pt} --out {tmp}/s.png", r"image_size 16 vs config 32"),
    sample("weights of another model", "{sample} --checkpoint {other_model_pt} --out {tmp}/s.png",
           r"weights do not fit a 'small' network at 16px \(\d+ missing tensor"),
    sample("weights of another shape", "{sample} --checkpoint {ema_shape_pt} --out {tmp}/s.png", r"\d+ shape mismatch\(es\) \(first: "),
    sample("NaN weights", "{sample} --checkpoint {ema_nan_pt} --out {tmp}/s.png", r"sampling produced non-finite values"),
    sample("a negative step", "{sample} --checkpoint {step_negative_pt} --out {tmp}/s.png",
           r"step_negative.pt: its 'step' must be an integer in \[0, 1000000000\], got -1"),
    # outputs that are inputs, and options that would change nothing
    sample("--out is the checkpoint", "{sample} --checkpoint {weights_npz} --out {weights_npz}",
           r"--out .*weights.npz is also the input --checkpoint: writing it would destroy that file"),
    sample("--out is the checkpoint by another name", "{sample} --checkpoint {weights_npz} --out {alias_npz}",
           r"--out .*alias.npz is also the input --checkpoint"),
    sample("--guidance-interval without a scale", "{sample} --guidance-interval 2 5 --out {tmp}/s.png",
           r"guidance_interval only limits classifier-free guidance: it needs labels and guidance_scale > 0"),
    sample("--guidance-scale, unconditional model", "{sample} --guidance-scale 3 --guidance-interval 2000 3000 --out {tmp}/s.png",
           r"--guidance-scale needs a class-conditional checkpoint"),
    sample("--guidance-interval beyond T", "{sample} --checkpoint {cond} --guidance-scale 3 --guidance-interval 2000 3000 --out {tmp}/s.png",
           r"guidance_interval must be timestep indices \(lo, hi\) with 0 <= lo <= hi <= 499 \(T = 500\), got \(2000, 3000\)"),
    sample("--eta with ddpm", "{sample} --sampler ddpm --eta 0.5 --out {tmp}/s.png", r"--eta is a DDIM option; the ddpm sampler"),

    # python -m ddpm_lib.train: tampered training checkpoints, one line naming the file and the field
    train("--resume, step 1e12", "{tiny} --num-images 64 --out {tampered_step_huge} --resume",
          r"checkpoint.pt: its 'step' must be an integer in \[0, 1000000000\], got 1000000000000"),
    train("--resume, step as text", "{tiny} --num-images 64 --out {tampered_step_text} --resume", r"its 'step' must be an integer .*got '2'"),
    train("--resume, weights of another shape", "{tiny} --num-images 64 --out {tampered_model_shape} --resume",
          r"checkpoint.pt: its 'model' does not fit this run's network \(1 shape mismatch\(es\)"),
    train("--resume, NaN raw weights", "{tiny} --num-images 64 --out {tampered_model_nan} --resume",
          r"raw weights \('model', first: .*\) hold NaN or inf values, so resuming would continue from them; restore an earlier "
          r"copy of the checkpoint, or start a new run \(another folder\) with a lower --lr"),
    train("--resume, EMA of another shape", "{tiny} --num-images 64 --out {tampered_ema_shape} --resume", r"its 'ema' does not fit this run's network"),
    train("--resume, optimizer a list", "{tiny} --num-images 64 --out {tampered_optimizer_list} --resume",
          r"its 'optimizer' is not an optimizer state"),
    train("--resume, Adam moments of another shape", "{tiny} --num-images 64 --out {tampered_optimizer_moment} --resume",
          r"its 'optimizer' cannot be restored \(its exp_avg has shape \(1"),
    train("--resume, RNG state text", "{tiny} --num-images 64 --out {tampered_rng_text} --resume", r"its 'rng' has no CPU generator state"),
    train("--resume, RNG state cut short", "{tiny} --num-images 64 --out {tampered_rng_short} --resume",
          r"its 'rng' cannot be restored \(Expected a CPUGeneratorImplState of size \d+"),
    train("--resume, world_size text", "{tiny} --num-images 64 --out {tampered_world_size_text} --resume",
          r"its 'world_size' must be an integer >= 1, got '1'"),
    train("a folder of other files", "{tiny} --out {foreign}",
          r"the run folder .*foreign holds files that are not a training run's \(loss.csv, samples\); to continue a run use --resume"),

    # python -m ddpm_lib.evaluate: outputs checked before any sampling or scoring
    evaluate("--json is the samples", "--samples {samples_npz} --json {samples_npz}", r"--json .*samples.npz is also the input --samples"),
    evaluate("--json is the checkpoint", "--checkpoint {ckpt} --json {ckpt}", r"--json .*checkpoint.pt is also the input --checkpoint"),
    evaluate("--json under a file", "--samples {samples_npz} --json {file}/scores.json",
             r"cannot write --json .*a_file/scores.json: .*a_file is a file, not a folder"),
    evaluate("--json a folder", "--samples {samples_npz} --json {empty}", r"--json .*empty is a folder"),
    evaluate("--json is --save-samples", "--checkpoint {weights} --save-samples {tmp}/s.npz --json {tmp}/s.npz",
             r"--json .*s.npz is also the output --save-samples"),
    evaluate("--save-samples .png", "--checkpoint {weights} --save-samples {tmp}/s.png", r"--save-samples must end in .npz"),
    evaluate("--save-samples with --samples", "--samples {samples_npz} --save-samples {tmp}/s.npz",
             r"--save-samples: sampling option\(s\), for --checkpoint; --samples scores samples already drawn"),
    evaluate("--steps with --samples", "--samples {samples_npz} --steps 10 --eta 0", r"--steps, --eta: sampling option"),
    evaluate("--steps with ddpm", "--checkpoint {weights} --sampler ddpm --steps 10", r"--steps: the ddpm sampler runs all T steps"),

    # python -m ddpm_lib.toy_cars
    toy("--per-type 0", "--per-type 0 --out {tmp}/p.png", r"--per-type must be in \[1, 256\], got 0"),
    toy("--image-size 0", "--image-size 0 --out {tmp}/p.png", r"--image-size must be in \[8, 512\], got 0"),
    toy("--image-size 100000", "--image-size 100000 --out {tmp}/p.png", r"--image-size must be in \[8, 512\], got 100000"),
    toy("--seed -1", "--seed -1 --out {tmp}/p.png", r"--seed must be in \[0, "),
    toy("--out under a file", "--out {file}/p.png", r"cannot write --out .*a_file/p.png: .*a_file is a file, not a folder"),
    toy("--out .jpg", "--out {tmp}/p.jpg", r"--out must end in .png, got"),
    toy("--out a folder", "--out {empty}", r"--out must end in .png"),

    # the library: checkpoints
    call("load an empty file", lambda p: load_checkpoint(p.empty_pt), CheckpointError, r"is empty \(0 bytes\)"),
    call("load a truncated file", lambda p: load_checkpoint(p.truncated_pt), CheckpointError, r"is not a checkpoint"),
    call("load a text file", lambda p: load_checkpoint(p.text_pt), CheckpointError, r"is not a checkpoint"),
    call("load random bytes", lambda p: load_checkpoint(p.random_pt), CheckpointError, r"is not a checkpoint"),
    call("load damaged bytes", lambda p: load_checkpoint(p.flipped_pt), CheckpointError, r"fails its checksum"),
    call("load a saved list", lambda p: load_checkpoint(p.list_pt), CheckpointError, r"it holds list, expected 'config' and 'ema'"),
    call("load a malicious pickle", lambda p: load_checkpoint(p.evil_pt), CheckpointError, r"refusing to load .* can run code"),
    call("load a missing file", lambda p: load_ema_model(p.root / "none.pt"), FileNotFoundError, r"no checkpoint at"),
    call("model_args that build nothing", lambda p: load_ema_model(p.args_extra_pt), CheckpointError,
         r"cannot build its network from model_args .*'width'"),
    call("config that is a string", lambda p: load_ema_model(p.config_str_pt), CheckpointError, r"'config' is a str, not a dict"),
    call("config with T=0", lambda p: load_ema_model(p.config_bad_pt), CheckpointError,
         r"holds a config this version cannot read: num_timesteps must be >= 1"),

    # the library: the diffusion process and sampling
    call("loss of uint8 images", lambda p: diffusion().training_loss(zero_model, torch.zeros(2, 3, 8, 8, dtype=torch.uint8)), ValueError,
         r"x0 must be a float tensor in \[-1, 1\], got torch.uint8; convert uint8 images with ddpm_lib.data.from_uint8"),
    call("loss of 0..255 floats", lambda p: diffusion().training_loss(zero_model, torch.full((2, 3, 8, 8), 200.0)), ValueError,
         r"x0 must lie in \[-1, 1\], got values in \[200, 200\]; scale images with x / 127.5 - 1"),
    call("loss of NaN images", lambda p: diffusion().training_loss(zero_model, torch.full((2, 3, 8, 8), float("nan"))), ValueError,
         r"x0 holds NaN values"),
    call("loss_type l2", lambda p: diffusion().training_loss(zero_model, torch.zeros(2, 3, 8, 8), "l2"), ValueError,
         r"unknown loss_type 'l2'; valid choices: mse, l1, huber"),
    call("betas with a 0", lambda p: GaussianDiffusion(torch.tensor([0.0, 0.1])), ValueError, r"betas must be .* every value in \(0, 1\)"),
    call("betas with a 1", lambda p: GaussianDiffusion(torch.tensor([0.1, 1.0])), ValueError, r"every value in \(0, 1\)"),
    call("betas with a NaN", lambda p: GaussianDiffusion(torch.tensor([0.1, float("nan")])), ValueError, r"every value in \(0, 1\)"),
    call("betas empty", lambda p: GaussianDiffusion(torch.tensor([])), ValueError, r"betas must be a non-empty 1-D tensor"),
    call("variance_type learned", lambda p: GaussianDiffusion(make_betas("linear", T), "learned"), ValueError,
         r"unknown variance_type 'learned'; valid choices: fixed_small, fixed_large"),
    call("schedule exp", lambda p: make_betas("exp", T), ValueError, r"unknown schedule 'exp'; valid choices: linear"),
    call("T of 0", lambda p: make_betas("linear", 0), ValueError, r"num_timesteps must be an integer >= 1, got 0"),
    call("sampler euler", lambda p: diffusion().sample(zero_model, (1, 3, 8, 8), "euler"), ValueError,
         r"unknown sampler 'euler'; valid choices: ddpm, ddim"),
    call("sampler lms", lambda p: generate(zero_model, diffusion(), 1, 8, sampler="lms", precision="fp32"), ValueError,
         r"unknown sampler 'lms'; valid choices: ddpm, ddim, euler, heun, dpmpp_2m"),
    call("spacing log", lambda p: generate(zero_model, diffusion(), 1, 8, sampler="euler", spacing="log", precision="fp32"),
         ValueError, r"unknown spacing 'log'; valid choices: timesteps, karras"),
    call("x_T of the wrong shape", lambda p: generate(zero_model, diffusion(), 2, 8, x_T=torch.randn(3, 3, 8, 8), precision="fp32"),
         ValueError, r"x_T has shape \(3, 3, 8, 8\), expected \(2, 3, 8, 8\)"),
    call("eta nan", lambda p: generate(zero_model, diffusion(), 1, 8, eta=float("nan"), precision="fp32"), ValueError,
         rf"eta {NUMBER} >= 0 and <= 1, got nan"),
    call("t out of range", lambda p: diffusion().q_sample(torch.zeros(2, 3, 8, 8), T), ValueError, rf"t must lie in \[0, {T - 1}\]"),
    call("t as floats", lambda p: diffusion().q_sample(torch.zeros(2, 3, 8, 8), torch.tensor([1.5, 2.0])), ValueError,
         r"t must hold integer timesteps"),

    # the library: guidance that would change nothing
    call("guidance_interval beyond T", lambda p: generate(CondZero(), diffusion(), 2, 8, labels=LABELS, guidance_scale=3.0,
                                                          guidance_interval=(2000, 3000), precision="fp32"),
         ValueError, r"guidance_interval must be timestep indices \(lo, hi\) with 0 <= lo <= hi <= 19 \(T = 20\), got \(2000, 3000\)"),
    call("guidance_interval without a scale", lambda p: generate(CondZero(), diffusion(), 2, 8, labels=LABELS, guidance_interval=(2, 5),
                                                                 precision="fp32"),
         ValueError, r"guidance_interval only limits classifier-free guidance: it needs labels and guidance_scale > 0"),
    call("guidance_interval without labels", lambda p: generate(zero_model, diffusion(), 2, 8, guidance_interval=(2, 5), precision="fp32"),
         ValueError, r"it needs labels and guidance_scale > 0"),
    call("guidance_interval between the steps", lambda p: generate(CondZero(), diffusion(), 2, 8, num_steps=2, labels=LABELS,
                                                                   guidance_scale=3.0, guidance_interval=(5, 10), precision="fp32"),
         ValueError, r"guidance_interval \(5, 10\) holds none of the 2 timesteps the sampler visits \(e.g. 19, 0\)"),
    call("guidance_scale, unconditional model", lambda p: generate(zero_model, diffusion(), 2, 8, labels=LABELS, guidance_scale=3.0,
                                                                   precision="fp32"),
         ValueError, r"labels need a class-conditional model"),
    call("guidance_scale without labels", lambda p: diffusion().sample(zero_model, (1, 3, 8, 8), "ddim", 2, guidance_scale=3.0), ValueError,
         r"guidance_scale needs labels"),

    # the library: a network output of the wrong shape, refused by every sampler and the loss
    call("(B, 1, H, W) output, loss", lambda p: diffusion().training_loss(one_channel, torch.zeros(2, 3, 8, 8)), ValueError, ONE_CHANNEL),
    call("(B, 1, H, W) output, loss with labels", lambda p: diffusion().training_loss(CondOneChannel(), torch.zeros(2, 3, 8, 8), labels=LABELS),
         ValueError, ONE_CHANNEL),
    call("(B, 1, H, W) output, DDIM", lambda p: generate(one_channel, diffusion(), 2, 8, precision="fp32"), ValueError, ONE_CHANNEL),
    call("(B, 1, H, W) output, DDPM", lambda p: generate(one_channel, diffusion(), 2, 8, sampler="ddpm", precision="fp32"), ValueError,
         ONE_CHANNEL),
    call("(B, 1, H, W) output, guided DDIM", lambda p: generate(CondOneChannel(), diffusion(), 2, 8, labels=LABELS, guidance_scale=2.0,
                                                                precision="fp32"),
         ValueError, ONE_CHANNEL),
    call("a tuple as output", lambda p: diffusion().training_loss(lambda x, t: (x,), torch.zeros(2, 3, 8, 8)), ValueError,
         r"model returned shape tuple, expected x_t's shape \(2, 3, 8, 8\)"),

    # the library: devices and precision
    call("$DDPM_FAST ture", lambda p: env_flag("DDPM_FAST"), ValueError, r"\$DDPM_FAST must be one of 1, true, yes, on or 0, false, no, off, got 'ture'",
         env={"DDPM_FAST": "ture"}),
    call("fp16 on a CPU", lambda p: resolve_precision("fp16", "cpu"), ValueError, r"precision 'fp16' is for GPUs"),
    call("auto without a model", lambda p: resolve_precision("auto", "cpu"), ValueError, r"precision 'auto' on a CPU or MPS is measured"),
    call("$DDPM_PRECISION fp8", lambda p: resolve_precision("auto", "cpu"), ValueError, r"unknown precision in \$DDPM_PRECISION 'fp8'",
         env={"DDPM_PRECISION": "fp8"}),
    call("$DDPM_PRECISION ' bf16'", lambda p: resolve_precision("auto", "cpu"), ValueError, r"DDPM_PRECISION ' bf16'; valid choices",
         env={"DDPM_PRECISION": " bf16"}),
    call("$DDPM_PRECISION fp16 on a CPU", lambda p: resolve_precision("auto", "cpu"), ValueError, r"precision 'fp16' is for GPUs",
         env={"DDPM_PRECISION": "fp16"}),
    call("device cuda without a GPU", lambda p: select_device("cuda:0"), ValueError, r"has no CUDA GPU", marks=NO_GPU),
    call("device gpu", lambda p: select_device("gpu"), ValueError, r"unknown device 'gpu'"),

    # the library: data
    call("dataset mnist", lambda p: load_dataset("mnist"), ValueError, r"unknown dataset 'mnist'; valid choices: toy_cars"),
    call("split val", lambda p: load_dataset("toy_cars", split="val"), ValueError, r"unknown split 'val'; valid choices: train, test"),
    call("image_size 4", lambda p: load_dataset("toy_cars", image_size=4), ValueError, r"image_size must be an integer >= 8, got 4"),
    call("num_images True", lambda p: load_dataset("toy_cars", image_size=8, num_images=True), ValueError,
         r"num_images must be an integer, got True"),
    call("seed as text", lambda p: load_dataset("toy_cars", image_size=8, num_images=2, seed="a"), ValueError,
         r"seed must be an integer, got 'a'"),
    call("toy_cars with a root", lambda p: load_dataset("toy_cars", root=p.empty), ValueError, r"toy_cars is generated, not read"),
    call("option of another dataset", lambda p: load_dataset("toy_cars", download=True), ValueError, r"unknown option\(s\) \['download'\]"),
    call("folder of no images", lambda p: load_dataset("folder", root=p.empty), DatasetUnavailableError, r"holds no image files"),
    call("folder that is a file", lambda p: load_dataset("folder", root=p.file), DatasetUnavailableError, r"is not a directory"),
    call("Stanford Cars, bad root", lambda p: load_dataset("stanford_cars", root=p.empty), DatasetUnavailableError,
         r"does not contain car_data/car_data/train .*\nTo get it: point root= at the unpacked Kaggle dataset"),
    call("float images as a dataset", lambda p: ImageTensorDataset(torch.zeros(2, 3, 8, 8), torch.zeros(2)), ValueError,
         r"images must be uint8 \(N, 3, H, W\), got torch.float32"),
    call("resume without a folder", lambda p: Trainer(TrainConfig(), None, resume=True), ValueError, r"resume=True needs out_dir"),
    call("betas of two dimensions", lambda p: GaussianDiffusion(torch.full((2, 2), 0.1)), ValueError, r"1-D"),
    call("a dataset of another image size", lambda p: _trainer_on_32px_images(), ValueError, r"image_size"),
]
# fmt: on


def _trainer_on_32px_images():
    cfg = TrainConfig.cpu_demo(
        model="tiny", image_size=16, batch_size=2, num_timesteps=T, precision="fp32"
    )
    return Trainer(
        cfg,
        None,
        dataset=load_dataset("toy_cars", image_size=32, num_images=4),
        device="cpu",
        progress=False,
    )


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file under ``root`` (a run's lock file aside: taking it writes the pid)."""
    return {
        str(q): (q.stat().st_size, q.stat().st_mtime_ns)
        for q in root.rglob("*")
        if q.is_file() and q.name != LOCK_NAME
    }


@pytest.mark.parametrize("kind, given, match, error, env", ROWS)
def test_bad_input(kind, given, match, error, env, paths, tmp_path, capsys, monkeypatch):
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    if kind == "call":
        with pytest.raises(error, match=match):
            given(paths)
    else:
        names = {k: v for k, v in vars(paths).items() if isinstance(v, Path)}
        argv = shlex.split(
            given.format(
                **names,
                tmp=tmp_path,
                tiny=TINY,
                sample=f"--checkpoint {paths.weights} {SAMPLE}",
                cond=COND_MODEL,
            )
        )
        main = {
            "train": train_cli.main,
            "sample": sample_cli.main,
            "evaluate": evaluate_cli.main,
            "toy_cars": toy_cars.main,
        }[kind]
        before = _snapshot(paths.root)
        try:
            status = main(argv)
        except SystemExit as exc:  # argparse refuses a bad option value itself
            status = exc.code
        err = capsys.readouterr().err
        assert status == 2, err
        assert "Traceback" not in err
        lines = err.splitlines()  # splits at the carriage returns of a progress bar too
        assert any(
            re.match(r"(python -m ddpm_lib\.\w+: )?error: ", line.strip()) for line in lines
        ), err
        assert re.search(match, err), err
        assert "continue with --resume" not in err  # never advice that would resume a broken state
        written = [q.name for q in tmp_path.rglob("*") if q.is_file()]
        assert written == [], f"a refused input still wrote {written}"
        assert _snapshot(paths.root) == before, "a refused input changed or removed a file"
    assert not paths.marker.exists(), "a pickled payload ran"


# ---------------------------------------------------------------------------------- divergence
def test_divergence_stops_before_writing_and_the_folder_takes_a_fresh_run(tmp_path, capsys):
    """AdamW with an absurd weight decay blows the weights up: the run stops, saves nothing, and can start again."""
    out = tmp_path / "run"
    argv = shlex.split(f"{TINY} --num-images 16 --out {out}")
    assert train_cli.main([*argv, "--optimizer", "adamw", "--weight-decay", "1e30"]) == 2
    err = capsys.readouterr().err
    assert re.search(
        r"error: training diverged at step \d+: the (loss|gradient norm) is (nan|inf)", err
    ), err
    assert (
        "no checkpoint was written; start again with a lower --lr in the same folder" in err
        and "Traceback" not in err
    )
    assert not (out / CHECKPOINT_NAME).exists()
    assert train_cli.main(argv) == 0  # loss rows of the diverged attempt do not block a fresh run
    steps = [
        int(float(line.split(",")[0])) for line in (out / "loss.csv").read_text().splitlines()[1:]
    ]
    assert steps == [1, 2] and load_checkpoint(out / CHECKPOINT_NAME)["step"] == 2


def test_divergence_after_a_checkpoint_resumes_with_a_lower_lr(
    paths, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    shutil.copytree(paths.run, out)
    argv = shlex.split(f"{TINY} --num-images 64 --out {out} --resume")
    monkeypatch.setattr(
        GaussianDiffusion,
        "_training_loss",
        lambda *a, **k: torch.tensor(float("nan"), requires_grad=True),
    )
    assert train_cli.main([*argv, "--max-steps", "4"]) == 2
    err = capsys.readouterr().err
    assert re.search(
        r"training diverged at step 2: .*checkpoint .* \(step 2\) is kept; continue with --resume and a lower --lr",
        err,
    ), err
    monkeypatch.undo()
    assert load_checkpoint(out / CHECKPOINT_NAME)["step"] == 2
    assert train_cli.main([*argv, "--max-steps", "3", "--lr", "5e-4"]) == 0, capsys.readouterr().err
    ckpt = load_checkpoint(out / CHECKPOINT_NAME)
    assert ckpt["step"] == 3 and ckpt["config"]["lr"] == 5e-4


# ---------------------------------------------------------------------------------- inputs taken as meant
def test_a_pathlib_data_root_is_stored_as_text(tmp_path):
    """A ``Path`` in the config would make every checkpoint of the run unloadable with ``weights_only=True``."""
    cfg = TrainConfig(dataset="folder", data_root=tmp_path)
    assert cfg.data_root == str(tmp_path)
    torch.save({"config": cfg.to_dict()}, tmp_path / "c.pt")
    assert torch.load(tmp_path / "c.pt", weights_only=True)["config"]["data_root"] == str(tmp_path)
