"""2-D data whose denoiser, score and flow velocity are known exactly (notebooks 10 and 11).

A mixture of isotropic Gaussians ``p(x_0) = sum_k w_k N(x_0; mu_k, tau^2 I)`` stays a mixture of
isotropic Gaussians when noise is added, so everything a diffusion model learns has a closed form:

- the denoiser ``D(x, sigma) = E[x_0 | x_0 + sigma eps = x]`` (Tweedie's formula, Efron 2011; the
  denoiser of Karras et al. 2022, Eq. 3), :meth:`GaussianMixture.denoise`,
- the score ``grad_x log p_sigma(x) = (D(x, sigma) - x) / sigma^2``, :meth:`GaussianMixture.score`,
- the velocity ``E[eps - x_0 | (1 - s) x_0 + s eps = x_s]`` of flow matching's straight path
  (Lipman et al. 2023, Eq. 23; Liu et al. 2023), :meth:`GaussianMixture.velocity`.

With them a sampler can be checked against the exact denoiser (its only error is then its own), and
a learned field can be drawn beside the true one. :class:`MLP` is a small network with the U-Net's
calling convention ``model(x, t)``, so :meth:`~ddpm_lib.diffusion.GaussianDiffusion.training_loss`
trains it on ``(B, d)`` points and :class:`~ddpm_lib.samplers.Denoiser` samples it; :func:`train_2d`
does so in seconds. :func:`ring` is the notebooks' data: eight blobs on a circle inside [-1, 1].

Time convention: ``s`` runs from data (0) to noise (1), as the library's ``t`` does (Liu et al.
2023; Esser et al. 2024); Lipman et al. 2023 put noise at 0 (their t is 1 - s).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ddpm_lib.checks import check_float, check_image_range, check_int
from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.unet import timestep_embedding


def _levels(value: float | torch.Tensor, n: int, what: str, maximum: float | None) -> torch.Tensor:
    """A level (a float, or a tensor of one value per point) as float64 ``(n, 1)``, checked."""
    if not isinstance(value, torch.Tensor):
        return torch.full((n, 1), check_float(value, what, 0, maximum), dtype=torch.float64)
    value = value.detach().to("cpu", torch.float64).reshape(-1, 1)
    if value.shape[0] not in (1, n):
        raise ValueError(
            f"{what} must be a float or hold one value per point ({n}), got {value.numel()}"
        )
    bad = (
        ~torch.isfinite(value) | (value < 0) | (value > (math.inf if maximum is None else maximum))
    )
    if bool(bad.any()):
        allowed = ">= 0" if maximum is None else f"in [0, {maximum:g}]"
        raise ValueError(f"{what} must be finite and {allowed}, got {value[bad][0].item()}")
    return value.expand(n, 1)


class GaussianMixture:
    """``p(x_0) = sum_k w_k N(x_0; mu_k, tau^2 I)`` in dimension d: exact denoiser, score, velocity.

    means ``(K, d)``; ``std`` tau > 0; weights ``(K,)`` >= 0 (None: equal), normalised here. Every
    method takes points ``(n, d)`` and returns ``(n, d)`` in their dtype and on their device; the
    arithmetic runs in float64 on the CPU. Levels (``sigma``, ``s``) are floats or tensors of one
    value per point.
    """

    def __init__(self, means: torch.Tensor, std: float, weights: torch.Tensor | None = None):
        means = torch.as_tensor(means, dtype=torch.float64).cpu()
        if means.dim() != 2 or means.shape[0] < 1 or not bool(torch.isfinite(means).all()):
            raise ValueError(
                "means must be a finite (K, d) tensor, one row per component, "
                f"got shape {tuple(means.shape)}"
            )
        self.means = means  # (K, d)
        self.std = check_float(
            std, "std (tau, each component's standard deviation)", 0, min_inclusive=False
        )
        if weights is None:
            weights = torch.ones(len(means), dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64).cpu()
        if weights.shape != (len(means),) or not bool((weights >= 0).all()) or weights.sum() <= 0:
            raise ValueError(
                f"weights must be ({len(means)},) non-negative with a positive sum, "
                f"got {weights.tolist()}"
            )
        self.weights = weights / weights.sum()  # (K,)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """``n`` draws of x_0, ``(n, d)``: a component k ~ w, then mu_k + tau z (on the CPU)."""
        n = check_int(n, "n (the number of points)", 1)
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (self.means[k] + self.std * z).to(dtype)

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must be (n, {self.dim}) points, got shape {tuple(x.shape)}")
        return x.detach().to("cpu", torch.float64)

    def _component_mean(
        self, x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(m, v)`` for ``x = alpha x_0 + beta eps``: ``m = E[mu_k | x]`` ``(n, d)``, v ``(n, 1)``.

        Given component k, ``x ~ N(alpha mu_k, v I)`` with ``v = alpha^2 tau^2 + beta^2``, the same
        for every k, so Bayes' rule weighs the components by ``r_k(x) ~ w_k exp(-|x - alpha mu_k|^2 /
        (2 v))`` (a softmax of log-densities) and ``m = sum_k r_k mu_k``. alpha, beta ``(n, 1)``.
        """
        v = alpha**2 * self.std**2 + beta**2  # (n, 1)
        dist2 = ((x[:, None, :] - alpha[:, :, None] * self.means[None]) ** 2).sum(-1)  # (n, K)
        r = torch.softmax(self.weights.log()[None] - dist2 / (2 * v), dim=1)  # (n, K)
        return r @ self.means, v

    def log_prob(self, x: torch.Tensor, sigma: float | torch.Tensor = 0.0) -> torch.Tensor:
        """log p_sigma(x) of ``x_0 + sigma eps``, float64 ``(n,)``: sum_k w_k N(mu_k, (tau^2 + sigma^2) I)."""
        xd = self._check(x)
        v = self.std**2 + _levels(sigma, len(xd), "sigma", None) ** 2  # (n, 1)
        dist2 = ((xd[:, None, :] - self.means[None]) ** 2).sum(-1)  # (n, K)
        log_normal = -dist2 / (2 * v) - self.dim / 2 * torch.log(2 * math.pi * v)
        return torch.logsumexp(self.weights.log()[None] + log_normal, dim=1)

    def denoise(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """The exact denoiser D(x, sigma) = E[x_0 | x_0 + sigma eps = x], ``(n, d)`` -> ``(n, d)``.

        Tweedie's formula (Efron 2011) for the mixture: ``sum_k r_k(x) (mu_k + tau^2 / (tau^2 +
        sigma^2) (x - mu_k))`` with responsibilities ``r_k ~ w_k N(x; mu_k, (tau^2 + sigma^2) I)``;
        the ideal denoiser of Karras et al. 2022, Eq. 3. Equals x at sigma = 0. Called as
        ``denoiser(x, sigma)``, it is a denoiser for every sampler of :mod:`ddpm_lib.samplers`.
        """
        xd = self._check(x)
        sigma = _levels(sigma, len(xd), "sigma", None)
        m, v = self._component_mean(xd, torch.ones_like(sigma), sigma)
        # E[x_0 | x, k] = mu_k + (tau^2 / v)(x - mu_k) is linear in mu_k: average it with m = E[mu_k | x];
        # written as x + sigma^2 (m - x) / v (Tweedie: x + sigma^2 times the score), exact at sigma = 0
        return (xd + sigma**2 / v * (m - xd)).to(x)

    def score(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """grad_x log p_sigma(x) = (D(x, sigma) - x) / sigma^2 (Tweedie), ``(n, d)``.

        Computed as ``(E[mu_k | x] - x) / (tau^2 + sigma^2)``, the same quantity, finite at sigma = 0
        too (the score of the data).
        """
        xd = self._check(x)
        sigma = _levels(sigma, len(xd), "sigma", None)
        m, v = self._component_mean(xd, torch.ones_like(sigma), sigma)
        return ((m - xd) / v).to(x)

    def velocity(self, x_s: torch.Tensor, s: float | torch.Tensor) -> torch.Tensor:
        """The exact flow velocity ``u(x_s, s) = E[eps - x_0 | (1 - s) x_0 + s eps = x_s]``, ``(n, d)``.

        The marginal velocity of the straight path (Lipman et al. 2023, Eqs. 8 and 23; Liu et al.
        2023, Eq. 1), s in [0, 1]: ``x_s / (1 - s) = x_0 + sigma eps`` with ``sigma = s / (1 - s)``, so
        ``x0_hat = D(x_s / (1 - s), sigma)``, ``eps_hat = (x_s - (1 - s) x0_hat) / s`` and ``u = eps_hat
        - x0_hat``. Computed from the joint Gaussian of each component, which holds at the ends too:
        u = -x_s at s = 0 (eps is independent of x_0 = x_s) and u = x_s - E[x_0] at s = 1 (x_s = eps
        tells nothing about x_0).
        """
        xd = self._check(x_s)
        s = _levels(s, len(xd), "s (the time of the path, data 0 to noise 1)", 1.0)
        alpha = 1 - s
        m, v = self._component_mean(xd, alpha, s)
        # given k, x_0 and x_s are jointly Gaussian: E[x_0 | x_s, k] = mu_k + (alpha tau^2 / v)(x_s -
        # alpha mu_k) and E[eps | x_s, k] = (s / v)(x_s - alpha mu_k), linear in mu_k: average with m
        x0 = m + alpha * self.std**2 / v * (xd - alpha * m)
        eps = s / v * (xd - alpha * m)
        return (eps - x0).to(x_s)


def ring(k: int = 8, radius: float = 0.7, std: float = 0.05) -> GaussianMixture:
    """The notebooks' data: ``k`` equal blobs of std ``std`` at angles 2 pi j / k, at ``radius``.

    The defaults keep the points inside [-1, 1] (radius + 6 std <= 1), the range the loss takes.
    """
    k = check_int(k, "k (the number of blobs)", 1)
    radius = check_float(radius, "radius", 0)
    angles = 2 * math.pi * torch.arange(k, dtype=torch.float64) / k
    return GaussianMixture(radius * torch.stack([angles.cos(), angles.sin()], dim=1), std)


class MLP(nn.Module):
    """A small network for points, ``forward(x (B, d), t (B,)) -> (B, d)``: the U-Net's convention.

    The timestep (integer, or fractional as :class:`~ddpm_lib.samplers.Denoiser` passes it) enters as
    the U-Net's sinusoidal embedding (:func:`~ddpm_lib.unet.timestep_embedding`), concatenated with x
    and fed to ``depth`` hidden layers of ``hidden`` SiLU units. What it outputs (eps, v, x_0 or the
    flow u) is the diffusion's ``prediction_type``, as for the U-Net.
    """

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, embed_dim: int = 32):
        super().__init__()
        self.dim = check_int(dim, "dim", 1)
        self.embed_dim = check_int(embed_dim, "embed_dim", 4)
        layers: list[nn.Module] = []
        width = dim + embed_dim
        for _ in range(check_int(depth, "depth", 1)):
            layers += [nn.Linear(width, check_int(hidden, "hidden", 1)), nn.SiLU()]
            width = hidden
        self.net = nn.Sequential(*layers, nn.Linear(width, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t, self.embed_dim).to(x.dtype)  # (B, embed_dim)
        return self.net(torch.cat([x, emb], dim=1))


def train_2d(
    diffusion: GaussianDiffusion,
    data: GaussianMixture | torch.Tensor,
    steps: int = 2000,
    batch_size: int = 512,
    lr: float = 2e-3,
    seed: int = 0,
    snr_gamma: float | None = None,
) -> tuple[MLP, list[float]]:
    """Train an :class:`MLP` on ``data`` with the library's loss (L_simple, Ho et al. 2020, Algorithm 1).

    Each of ``steps`` Adam steps draws ``batch_size`` points (from the mixture, or rows of an ``(N, d)``
    tensor) and takes :meth:`~ddpm_lib.diffusion.GaussianDiffusion.training_loss` on them as the
    trainer does on images (its checks made once, here), with the diffusion's
    ``prediction_type`` and Min-SNR ``snr_gamma``; the learning rate decays linearly to 0; one
    CPU thread. The points must lie in [-1, 1], as images do. Returns the network in eval mode
    and the loss of every step. Seeded: the same arguments, the same network.
    """
    steps = check_int(steps, "steps", 1)
    batch_size = check_int(batch_size, "batch_size", 1)
    lr = check_float(lr, "lr", 0, min_inclusive=False)
    if snr_gamma is not None:
        check_float(snr_gamma, "snr_gamma", 0, min_inclusive=False)
    g = torch.Generator().manual_seed(check_int(seed, "seed"))
    if isinstance(data, GaussianMixture):
        reach = float(data.means.abs().max()) + 6 * data.std
        if reach > 1 + 1e-9:
            raise ValueError(
                f"the mixture reaches |x| = {reach:.3g} (max |mu| + 6 tau); the loss takes points in "
                "[-1, 1] as it does images: scale the means and std down"
            )
        dim, draw = data.dim, lambda: data.sample(batch_size, g)
    else:
        check_image_range(data, "data")
        if data.dim() != 2:
            raise ValueError(f"data must be (N, d) points, got shape {tuple(data.shape)}")
        dim = data.shape[1]
        draw = lambda: data[torch.randint(len(data), (batch_size,), generator=g)]
    # the initial weights, seeded, leaving the global generator alone
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MLP(dim)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / steps)
    losses = []
    threads = torch.get_num_threads()
    torch.set_num_threads(
        1
    )  # a network this small gains nothing from more; on busy cores, 10x slower
    try:
        for _ in range(steps):
            x0 = draw().float()  # in [-1, 1]: the mixture's reach or the data checked above
            loss = diffusion._training_loss(model, x0, generator=g, snr_gamma=snr_gamma)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    return model.eval(), losses
