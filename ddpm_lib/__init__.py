"""ddpm_lib: the library behind the ddpm-from-scratch notebook series.

Modules in the order the notebooks teach them: ``schedules`` (beta_t), ``diffusion`` (forward
process, posterior, loss, the progressive DDPM/DDIM sampler), ``bound`` (the variational bound,
bits/dim), ``unet`` (the network), ``toy_cars`` and ``data`` (datasets), ``devices`` (device and measured
precision), ``config`` and ``checkpoints``, ``sampling`` (the one sampling path), ``training`` (the
engine), ``features`` and ``metrics`` (evaluation), the CLIs ``train``, ``sample`` and ``evaluate``, and
``plotting`` and ``widgets``; ``checks`` holds the shared argument checks. Notation: NOTATION.md.
"""

from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.schedules import make_betas, terminal_signal
from ddpm_lib.unet import UNet, UNetConfig, build_model

__all__ = [
    "GaussianDiffusion",
    "UNet",
    "UNetConfig",
    "build_model",
    "make_betas",
    "terminal_signal",
]
__version__ = "0.1.0"
