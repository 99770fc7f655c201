"""ddpm_lib: the library behind the ddpm-from-scratch notebook series.

Modules in the order the notebooks teach them: ``schedules`` (beta_t), ``diffusion`` (forward
process, posterior, loss, DDPM/DDIM samplers), ``unet`` (eps_theta), ``data`` (datasets),
``training`` (the engine), ``plotting`` and ``widgets``. Notation: NOTATION.md.
"""

from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.schedules import make_betas, terminal_signal
from ddpm_lib.unet import UNet, UNetConfig, build_model

__all__ = ["GaussianDiffusion", "UNet", "UNetConfig", "build_model", "make_betas", "terminal_signal"]
__version__ = "0.1.0"
