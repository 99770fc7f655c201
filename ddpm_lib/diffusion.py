"""The Gaussian diffusion process: forward noising, posterior, loss and samplers (stages 2 and 5).

The network is kept apart from the process: every method that needs it takes ``model`` as an
argument, a callable ``model(x_t, t) -> eps_pred`` with ``x_t`` of shape ``(B, C, H, W)`` and ``t`` a
LongTensor of shape ``(B,)``. Timestep convention: integer ``t`` in ``[0, T-1]``; index ``t`` is the
paper's step ``t+1``. The sampler visits ``T-1, ..., 0`` and adds no noise at ``t = 0``.

A class-conditional network is called ``model(x_t, t, y)`` with labels ``y`` ``(B,)``; every sampler
takes ``labels`` and ``guidance_scale`` and runs classifier-free guidance (:func:`classifier_free`).
"""

from __future__ import annotations

import collections
import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ddpm_lib.checks import check_choice, check_float, check_image_range, check_int

VarianceType = Literal["fixed_small", "fixed_large"]
Sampler = Literal["ddpm", "ddim"]
LossType = Literal["mse", "l1", "huber"]
# diffusers' names for what the network outputs: the noise, v, or the clean image x_0 ("sample"); "flow":
# the velocity eps - x_0 of flow matching's straight path (notebook 11)
PredictionType = Literal["epsilon", "v_prediction", "sample", "flow"]
Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class SampleStep(NamedTuple):
    """One reverse step: its input ``x_t`` at index ``t``, the estimate ``x0_pred``, its output ``x_prev`` (x_{t-1} or the next DDIM index)."""

    t: int
    x_t: torch.Tensor
    x0_pred: torch.Tensor
    x_prev: torch.Tensor


def classifier_free(
    model: Callable[..., torch.Tensor],
    labels: torch.Tensor,
    guidance_scale: float = 0.0,
    interval: tuple[int, int] | None = None,
) -> Model:
    """The guided noise prediction of classifier-free guidance (Ho & Salimans 2022, Eq. 6), as a ``Model``.

    ``eps~(x_t, t) = (1 + w) eps(x_t, t, y) - w eps(x_t, t, null)`` with ``w = guidance_scale`` (the paper's
    convention: w = 0 is the plain conditional model; diffusers' ``guidance_scale`` s is w + 1). Both
    predictions come from one batched forward pass of ``2B`` images; at w = 0 only the conditional half
    runs. ``model(x, t, y)`` must treat ``y = None`` as the null label (as :class:`ddpm_lib.unet.UNet` does).
    ``interval = (lo, hi)`` guides only at timestep indices lo <= t <= hi and runs the conditional model
    alone elsewhere (Kynkaanniemi et al. 2024 guide the middle noise levels only): a guided step costs
    two network passes, the others one. labels ``(B,)``; the returned callable maps ``(B, C, H, W), (B,)``
    to ``(B, C, H, W)``.
    """
    w = check_float(guidance_scale, "guidance_scale", 0)
    if interval is not None:
        lo, hi = _guidance_bounds(interval)
    null = torch.full_like(labels, _num_classes(model))

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        y = labels.to(x.device)
        if w == 0 or (interval is not None and not lo <= int(t[0]) <= hi):
            return model(x, t, y)
        # one forward pass, 2B images
        both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null.to(x.device)]))
        cond, uncond = both.chunk(2)
        return cond + w * (cond - uncond)  # = (1 + w) cond - w uncond

    return eps


def _guidance_bounds(interval, num_timesteps: int | None = None) -> tuple[int, int]:
    """``(lo, hi)`` of a guidance interval: timestep indices, 0 <= lo <= hi (<= T-1 given T).

    The one rule of every entry point that takes ``guidance_interval`` (:func:`classifier_free`
    and the samplers); raises ``ValueError`` otherwise.
    """
    lo, hi = tuple(interval)
    whole = all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi))
    if not whole or not 0 <= lo <= hi or (num_timesteps is not None and hi >= num_timesteps):
        most = "" if num_timesteps is None else f" <= {num_timesteps - 1} (T = {num_timesteps})"
        raise ValueError(
            f"guidance_interval must be timestep indices (lo, hi) with 0 <= lo <= hi{most}, "
            f"got {tuple(interval)}"
        )
    return lo, hi


def _num_classes(model: Callable[..., torch.Tensor]) -> int:
    """The ``num_classes`` of a class-conditional ``model``; refuses one that takes no labels."""
    num_classes = getattr(model, "num_classes", None)
    if not num_classes:
        raise ValueError(
            "labels need a class-conditional model (trained with --class-cond); this one takes no labels"
        )
    return num_classes


@contextlib.contextmanager
def eval_mode(model: Model):
    """Run ``model`` in eval mode without gradients, restoring its previous mode afterwards."""
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if was_training:
            model.train()


class GaussianDiffusion:
    """DDPM (Ho et al. 2020) and DDIM (Song et al. 2021) for a fixed schedule ``betas`` of shape ``(T,)``.

    All schedule constants are precomputed in float64 and cast to the input's device and dtype
    when used. ``variance_type`` picks the reverse-process variance sigma_t^2 of Sec. 3.2:
    ``"fixed_small"`` (the default) is the posterior variance tilde-beta_t of Eq. 7, optimal when
    x_0 is a point; ``"fixed_large"`` is beta_t, optimal when x_0 ~ N(0, I). The paper reports
    similar sample quality for both.

    ``prediction_type``: the network outputs ``"epsilon"`` (eps_theta, Eq. 11), ``"v_prediction"``
    (v = sqrt(bar-alpha_t) eps - sqrt(1 - bar-alpha_t) x_0, Salimans & Ho 2022, App. D) or
    ``"sample"`` (x_0 itself, the mu-tilde parameterisation the paper compares in Table 2) or ``"flow"``
    (u = eps - x_0, the velocity of flow matching's straight path ``(1 - s) x_0 + s eps``, Lipman et al.
    2023, Eq. 23; Liu et al. 2023); samplers use eps (:meth:`eps_from_output`).
    """

    def __init__(
        self,
        betas: torch.Tensor,
        variance_type: VarianceType = "fixed_small",
        prediction_type: PredictionType = "epsilon",
    ):
        check_choice(variance_type, VarianceType, "variance_type")
        check_choice(prediction_type, PredictionType, "prediction_type")
        self.prediction_type = prediction_type
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.dim() != 1:
            raise ValueError(
                f"betas must be a 1-D tensor of shape (T,), got shape {tuple(betas.shape)}"
            )
        if betas.numel() < 1 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must be a non-empty 1-D tensor with every value in (0, 1)")
        self.variance_type = variance_type
        self.num_timesteps = int(betas.numel())
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat(
            [torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]]
        )
        # Eq. 4: q(x_t | x_0) = N(sqrt(bar-alpha_t) x_0, (1 - bar-alpha_t) I)
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        # x_0 from x_t and eps, the inverse of Eq. 4
        self.sqrt_recip_alphas_cumprod = (1.0 / self.alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1.0).sqrt()
        # Eq. 7: tilde-beta_t and the two coefficients of tilde-mu_t(x_t, x_0)
        self.posterior_variance = (
            betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        )
        self.posterior_mean_coef1 = (
            betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        )
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * self.alphas.sqrt() / (1.0 - self.alphas_cumprod)
        )
        self._cache: dict[tuple, torch.Tensor] = {}

    # ------------------------------------------------------------------ helpers
    def _extract(self, name: str, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Gather ``self.<name>[t]`` as shape ``(B, 1, ..., 1)`` on x's device and in x's dtype."""
        key = (name, x.device, x.dtype)
        if key not in self._cache:
            self._cache[key] = getattr(self, name).to(device=x.device, dtype=x.dtype)
        out = self._cache[key][t.to(x.device)]
        return out.view(-1, *([1] * (x.dim() - 1)))

    def _as_timesteps(self, t: torch.Tensor | int, x: torch.Tensor) -> torch.Tensor:
        """Turn an int or tensor ``t`` into a LongTensor of shape ``(B,)`` and check its range."""
        t = torch.as_tensor(t, device=x.device)
        if t.is_floating_point():
            raise ValueError(
                "t must hold integer timesteps in [0, T-1], got a floating-point tensor"
            )
        t = t.long().expand(x.shape[0]) if t.dim() == 0 else t.long()
        if t.shape != (x.shape[0],):
            raise ValueError(
                f"t must have shape ({x.shape[0]},) to match the batch, got {tuple(t.shape)}"
            )
        if int(t.min()) < 0 or int(t.max()) >= self.num_timesteps:
            raise ValueError(
                f"t must lie in [0, {self.num_timesteps - 1}], got values in [{int(t.min())}, {int(t.max())}]"
            )
        return t

    # ------------------------------------------------------------------ forward process
    def q_sample(
        self, x0: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Sample x_t ~ q(x_t | x_0) in closed form (Ho et al. 2020, Eq. 4).

        ``x_t = sqrt(bar-alpha_t) x_0 + sqrt(1 - bar-alpha_t) noise``; x0 and noise ``(B, C, H, W)``,
        t ``(B,)``; returns ``(B, C, H, W)``.
        """
        t = self._as_timesteps(t, x0)
        if noise is None:
            noise = torch.randn_like(x0)
        elif noise.shape != x0.shape:
            raise ValueError(
                f"noise has shape {tuple(noise.shape)}, expected x0's shape {tuple(x0.shape)}"
            )
        return (
            self._extract("sqrt_alphas_cumprod", t, x0) * x0
            + self._extract("sqrt_one_minus_alphas_cumprod", t, x0) * noise
        )

    def q_posterior(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of the posterior q(x_{t-1} | x_t, x_0) (Ho et al. 2020, Eqs. 6-7).

        Returns ``(mean, variance)``: mean ``(B, C, H, W)``; variance tilde-beta_t of shape
        ``(B, 1, 1, 1)``, broadcastable against the mean. At t = 0 the variance is 0 (x_0 is known).
        """
        t = self._as_timesteps(t, x_t)
        mean = (
            self._extract("posterior_mean_coef1", t, x_t) * x0
            + self._extract("posterior_mean_coef2", t, x_t) * x_t
        )
        return mean, self._extract("posterior_variance", t, x_t)

    def predict_x0_from_noise(
        self, x_t: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor
    ) -> torch.Tensor:
        """hat-x_0 = (x_t - sqrt(1 - bar-alpha_t) eps) / sqrt(bar-alpha_t), Eq. 4 solved for x_0 (cf. Eq. 15)."""
        t = self._as_timesteps(t, x_t)
        return (
            self._extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t
            - self._extract("sqrt_recipm1_alphas_cumprod", t, x_t) * noise
        )

    def predict_noise_from_x0(
        self, x_t: torch.Tensor, t: torch.Tensor | int, x0: torch.Tensor
    ) -> torch.Tensor:
        """The eps consistent with x_t and a (clipped) x_0: Eq. 4 solved for eps."""
        t = self._as_timesteps(t, x_t)
        return (self._extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t - x0) / self._extract(
            "sqrt_recipm1_alphas_cumprod", t, x_t
        )

    def velocity(
        self, x0: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor
    ) -> torch.Tensor:
        """v = sqrt(bar-alpha_t) eps - sqrt(1 - bar-alpha_t) x_0 (Salimans & Ho 2022, App. D), ``(B, C, H, W)``."""
        t = self._as_timesteps(t, x0)
        return (
            self._extract("sqrt_alphas_cumprod", t, x0) * noise
            - self._extract("sqrt_one_minus_alphas_cumprod", t, x0) * x0
        )

    def eps_from_output(
        self, x_t: torch.Tensor, t: torch.Tensor | int, output: torch.Tensor
    ) -> torch.Tensor:
        """The noise estimate eps_theta from the network's output, ``(B, C, H, W)``.

        For ``"epsilon"`` the output itself; for ``"v_prediction"`` eps = sqrt(1 - bar-alpha_t) x_t +
        sqrt(bar-alpha_t) v, Eq. 4 and the definition of v solved for eps; for ``"sample"`` Eq. 4
        solved for eps given x_0 (:meth:`predict_noise_from_x0`); for ``"flow"`` eps = (x_t + sqrt(bar-alpha_t)
        u) / (sqrt(bar-alpha_t) + sqrt(1 - bar-alpha_t)), Eq. 4 with eps = x_0 + u solved for eps.
        """
        if self.prediction_type == "epsilon":
            return output
        t = self._as_timesteps(t, x_t)
        if self.prediction_type == "sample":
            return self.predict_noise_from_x0(x_t, t, output)
        if self.prediction_type == "flow":
            a = self._extract("sqrt_alphas_cumprod", t, x_t)
            b = self._extract("sqrt_one_minus_alphas_cumprod", t, x_t)
            return (x_t + a * output) / (a + b)
        return (
            self._extract("sqrt_one_minus_alphas_cumprod", t, x_t) * x_t
            + self._extract("sqrt_alphas_cumprod", t, x_t) * output
        )

    @staticmethod
    def model_output(
        model: Model, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The network's output at ``x_t`` ``(B, C, H, W)`` and ``t`` ``(B,)``, checked to be ``(B, C, H, W)`` too.

        Every call of the network (the loss, DDPM, DDIM, the bound) goes through here: an output of another
        shape, e.g. ``(B, 1, H, W)``, would broadcast silently into a wrong loss or wrong samples.
        """
        output = model(x_t, t) if labels is None else model(x_t, t, labels)
        if not isinstance(output, torch.Tensor) or output.shape != x_t.shape:
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(
                f"model returned shape {got}, expected x_t's shape {tuple(x_t.shape)}: the network must "
                "predict one value per input pixel and channel"
            )
        return output

    def snr(self, t: torch.Tensor | int) -> torch.Tensor:
        """SNR(t) = bar-alpha_t / (1 - bar-alpha_t) (Kingma et al. 2021), float64 ``(B,)``."""
        return (self.alphas_cumprod / (1.0 - self.alphas_cumprod))[
            torch.as_tensor(t, dtype=torch.long).reshape(-1).cpu()
        ]

    # ------------------------------------------------------------------ loss
    def training_loss(
        self,
        model: Model,
        x0: torch.Tensor,
        loss_type: LossType = "mse",
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | None = None,
        snr_gamma: float | None = None,
    ) -> torch.Tensor:
        """The simplified objective L_simple (Ho et al. 2020, Eq. 14; Algorithm 1, lines 2-5).

        Draws ``t ~ Uniform{0..T-1}`` and ``noise ~ N(0, I)`` unless given, and returns the scalar mean over all
        elements of ``loss(target, model(q_sample(x0, t, noise), t))`` in float32 whatever the model's precision; the
        target is the noise (v for ``"v_prediction"``, x0 for ``"sample"``, eps - x0 for ``"flow"``). x0 ``(B, C, H, W)`` in [-1, 1]; ``labels`` ``(B,)`` are passed
        on as ``model(x_t, t, labels)`` (a class-conditional model; the null label included).

        ``snr_gamma``: Min-SNR-gamma weights (Hang et al. 2023, Sec. 3.4; they use 5), min(SNR, gamma) / SNR for eps,
        min(SNR, gamma) / (SNR + 1) for v, min(SNR, gamma) for x_0, min(SNR, gamma) / (1 + sqrt(SNR))^2 for
        the flow: each target's squared error is SNR, SNR + 1, 1 or (1 + sqrt(SNR))^2 times the x_0 error, so
        every target gets min(SNR, gamma) times the x_0 error of the image.
        """
        check_choice(loss_type, LossType, "loss_type")
        check_image_range(x0)
        if snr_gamma is not None:
            check_float(snr_gamma, "snr_gamma", 0, min_inclusive=False)
        return self._training_loss(model, x0, loss_type, t, noise, generator, labels, snr_gamma)

    def _training_loss(
        self,
        model,
        x0,
        loss_type="mse",
        t=None,
        noise=None,
        generator=None,
        labels=None,
        snr_gamma=None,
    ) -> torch.Tensor:
        """:meth:`training_loss` unchecked, for loops that checked once (Trainer, train_2d)."""
        B = x0.shape[0]
        rng_device = generator.device if generator is not None else x0.device
        if t is None:
            t = torch.randint(0, self.num_timesteps, (B,), generator=generator, device=rng_device)
        t = self._as_timesteps(t, x0)
        if noise is None:
            noise = torch.randn(
                x0.shape, generator=generator, device=rng_device, dtype=x0.dtype
            ).to(x0.device)
        x_t = self.q_sample(x0, t, noise)
        output = self.model_output(model, x_t, t, labels).float()
        target = {
            "epsilon": lambda: noise.float(),
            "v_prediction": lambda: self.velocity(x0.float(), t, noise.float()),
            "sample": lambda: x0.float(),
            "flow": lambda: noise.float() - x0.float(),
        }[self.prediction_type]()
        loss_fn = {
            "mse": F.mse_loss,
            "l1": F.l1_loss,
            "huber": functools.partial(F.huber_loss, delta=1.0),
        }[loss_type]
        if snr_gamma is None:
            return loss_fn(output, target)
        snr = self.snr(t)
        # each target's squared error in units of the x_0 error (the SNR identities of notebook 08)
        x0_units = {
            "epsilon": snr,
            "v_prediction": snr + 1,
            "sample": torch.ones_like(snr),
            "flow": (1 + snr.sqrt()) ** 2,
        }
        weight = snr.clamp(max=snr_gamma) / x0_units[self.prediction_type]
        per_image = loss_fn(output, target, reduction="none").flatten(1).mean(1)
        return (weight.to(per_image) * per_image).mean()

    # ------------------------------------------------------------------ reverse process
    def p_mean_variance(
        self, model: Model, x_t: torch.Tensor, t: torch.Tensor | int, clip_denoised: bool = True
    ) -> dict[str, torch.Tensor]:
        """Mean and variance of p_theta(x_{t-1} | x_t) (Ho et al. 2020, Eqs. 1 and 11).

        The mean is the posterior mean of Eq. 7 at the predicted hat-x_0, which equals Eq. 11
        exactly when hat-x_0 is not clipped. Returns a dict with ``mean`` ``(B, C, H, W)``,
        ``variance`` ``(B, 1, 1, 1)``, ``x0_pred`` and ``eps_pred`` ``(B, C, H, W)``.
        """
        t = self._as_timesteps(t, x_t)
        output = self.model_output(model, x_t, t).to(x_t.dtype)
        eps_pred = self.eps_from_output(x_t, t, output)
        x0_pred = self.predict_x0_from_noise(x_t, t, eps_pred)
        if clip_denoised:
            x0_pred = x0_pred.clamp(-1.0, 1.0)
        mean, posterior_variance = self.q_posterior(x0_pred, x_t, t)
        if self.variance_type == "fixed_small":
            variance = posterior_variance
        else:
            variance = self._extract("betas", t, x_t)
        return {"mean": mean, "variance": variance, "x0_pred": x0_pred, "eps_pred": eps_pred}

    def _p_sample(self, model, x_t, t, noise, clip_denoised):
        out = self.p_mean_variance(model, x_t, t, clip_denoised)
        t = self._as_timesteps(t, x_t)
        nonzero = (t != 0).to(x_t.dtype).view(-1, *([1] * (x_t.dim() - 1)))  # no noise at t = 0
        if noise is None:
            noise = torch.randn_like(x_t)
        return out["mean"] + nonzero * out["variance"].sqrt() * noise, out["x0_pred"]

    @torch.no_grad()
    def p_sample(
        self,
        model: Model,
        x_t: torch.Tensor,
        t: torch.Tensor | int,
        noise: torch.Tensor | None = None,
        clip_denoised: bool = True,
    ) -> torch.Tensor:
        """One step of ancestral sampling (Ho et al. 2020, Algorithm 2, lines 3-4): x_t -> x_{t-1}.

        ``x_{t-1} = mu_theta(x_t, t) + sigma_t z`` with ``z = noise`` when given (else drawn), and
        z = 0 where t = 0. x_t ``(B, C, H, W)``; t an int or ``(B,)``; returns ``(B, C, H, W)``.
        Runs without gradients, so a loop of T calls keeps no autograd graph.
        """
        return self._p_sample(model, x_t, t, noise, clip_denoised)[0]

    def ddim_timesteps(self, num_steps: int) -> list[int]:
        """The ``num_steps`` timesteps DDIM visits, evenly spaced from T-1 down to 0 (both included)."""
        check_int(
            num_steps,
            f"num_steps (DDIM steps, at most T={self.num_timesteps})",
            1,
            self.num_timesteps,
        )
        if num_steps == 1:
            return [self.num_timesteps - 1]
        steps = np.unique(
            np.round(np.linspace(0, self.num_timesteps - 1, num_steps)).astype(np.int64)
        )
        return [int(s) for s in steps[::-1]]

    @torch.no_grad()
    def ddim_step(
        self,
        model: Model,
        x_t: torch.Tensor,
        t: int,
        t_prev: int,
        eta: float = 0.0,
        noise: torch.Tensor | None = None,
        clip_denoised: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One DDIM update x_t -> x_{t_prev} (Song et al. 2021, Eq. 12, sigma from Eq. 16).

        ``t_prev = -1`` means the final step to x_0 (bar-alpha = 1, no noise). eta = 0 is
        deterministic; eta = 1 with consecutive steps is DDPM with sigma_t^2 = tilde-beta_t.
        Returns ``(x_prev, x0_pred)``, both ``(B, C, H, W)``. Runs without gradients.
        """
        tt = self._as_timesteps(t, x_t)
        eps_pred = self.eps_from_output(x_t, tt, self.model_output(model, x_t, tt).to(x_t.dtype))
        x0_pred = self.predict_x0_from_noise(x_t, tt, eps_pred)
        if clip_denoised:
            x0_pred = x0_pred.clamp(-1.0, 1.0)
            eps_pred = self.predict_noise_from_x0(x_t, tt, x0_pred)
        a_t = self.alphas_cumprod[t].item()
        a_prev = self.alphas_cumprod[t_prev].item() if t_prev >= 0 else 1.0
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
        x_prev = a_prev**0.5 * x0_pred + max(1 - a_prev - sigma**2, 0.0) ** 0.5 * eps_pred
        if sigma > 0:
            x_prev = x_prev + sigma * (torch.randn_like(x_t) if noise is None else noise)
        return x_prev, x0_pred

    def sampling_timesteps(
        self, sampler: Sampler = "ddpm", num_steps: int | None = None
    ) -> list[int]:
        """The indices a sampler visits, from T-1 down to 0.

        ``"ddpm"`` runs all T steps: ``num_steps`` must be None or T. ``"ddim"`` runs ``num_steps``
        evenly spaced steps (None: min(50, T)), at most T.
        """
        check_choice(sampler, Sampler, "sampler")
        if sampler == "ddpm":
            if num_steps not in (None, self.num_timesteps):
                raise ValueError(
                    f"the ddpm sampler runs all T={self.num_timesteps} steps; use sampler='ddim' for num_steps={num_steps}"
                )
            return list(range(self.num_timesteps - 1, -1, -1))
        return self.ddim_timesteps(min(50, self.num_timesteps) if num_steps is None else num_steps)

    def _check_guidance(
        self, guidance_scale: float, interval, labels: torch.Tensor | None, timesteps: list[int]
    ) -> None:
        """Refuse guidance that would change nothing; the check of every sampler entry point.

        w > 0 without labels, or an interval without guidance, outside [0, T-1] or holding none
        of the ``timesteps`` the sampler visits. Used by :meth:`sample_progressive` and
        :func:`ddpm_lib.sampling.generate`; w itself is checked by :func:`classifier_free`.
        """
        if interval is not None:
            if labels is None or not guidance_scale:
                raise ValueError(
                    "guidance_interval only limits classifier-free guidance: it needs labels and guidance_scale > 0"
                )
            lo, hi = _guidance_bounds(interval, self.num_timesteps)
            if not any(lo <= t <= hi for t in timesteps):
                raise ValueError(
                    f"guidance_interval {tuple(interval)} holds none of the {len(timesteps)} timesteps the sampler "
                    f"visits (e.g. {', '.join(f'{t:g}' for t in timesteps[:6])}); widen it or use more steps"
                )
        if labels is None and guidance_scale:
            raise ValueError("guidance_scale needs labels: the classes to guide towards")

    def sample_progressive(
        self,
        model: Model,
        shape: tuple[int, ...],
        sampler: Sampler = "ddpm",
        num_steps: int | None = None,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        clip_denoised: bool = True,
        progress: bool = False,
        x_T: torch.Tensor | None = None,
        allow_eta_above_one: bool = False,
        labels: torch.Tensor | None = None,
        guidance_scale: float = 0.0,
        guidance_interval: tuple[int, int] | None = None,
    ) -> Iterator[SampleStep]:
        """Run the reverse process from x_T ~ N(0, I) of ``shape`` ``(B, C, H, W)``, yielding every step.

        ``sampler="ddpm"``: Algorithm 2 of Ho et al. 2020 over all T steps. ``sampler="ddim"``: Song et
        al. 2021, Eq. 12 over ``num_steps`` evenly spaced steps with stochasticity ``eta`` in [0, 1]
        (Eq. 16; larger only with ``allow_eta_above_one``). Yields a :class:`SampleStep` per step, the last
        one's ``x_prev`` being x_0 (not yet clamped). The model runs in eval mode under no_grad on its
        own device; all noise is drawn from ``generator`` (on that device) when given, so a seed fixes
        the result. The improved-diffusion ``p_sample_loop_progressive`` pattern. ``labels`` ``(B,)`` ask a
        class-conditional model for those classes, with classifier-free ``guidance_scale`` w >= 0 applied at
        the timesteps of ``guidance_interval`` (:func:`classifier_free`; w = 0: the conditional model alone).
        """
        timesteps = self.sampling_timesteps(sampler, num_steps)
        check_float(eta, "eta", 0, None if allow_eta_above_one else 1)
        device = model_device(model)
        if generator is not None and generator.device.type != device.type:
            raise ValueError(
                f"the generator is on {generator.device} but the model is on {device}; make the generator on {device}"
            )
        shape = tuple(shape)
        if x_T is not None and tuple(x_T.shape) != shape:
            raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {shape}")

        def randn():
            return torch.randn(shape, generator=generator, device=device)

        self._check_guidance(guidance_scale, guidance_interval, labels, timesteps)
        net = model
        if labels is not None:
            if tuple(labels.shape) != shape[:1]:
                raise ValueError(
                    f"labels must have shape ({shape[0]},), one per image, got {tuple(labels.shape)}"
                )
            net = classifier_free(model, labels.to(device), guidance_scale, guidance_interval)
        x = randn() if x_T is None else x_T.to(device)
        if progress:
            from tqdm.auto import tqdm

            timesteps_iter = tqdm(timesteps, desc=f"{sampler} sampling", leave=False)
        else:
            timesteps_iter = timesteps
        for i, t in enumerate(timesteps_iter):
            # per step: no grad mode or train flag leaks to the caller between yields
            with eval_mode(model):
                if sampler == "ddpm":
                    noise = randn() if t > 0 else torch.zeros_like(x)  # Algorithm 2, line 3
                    x_prev, x0_pred = self._p_sample(net, x, t, noise, clip_denoised)
                else:
                    t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
                    noise = randn() if (eta > 0 and t_prev >= 0) else None
                    x_prev, x0_pred = self.ddim_step(net, x, t, t_prev, eta, noise, clip_denoised)
            yield SampleStep(t, x, x0_pred, x_prev)
            x = x_prev

    def sample(
        self,
        model: Model,
        shape: tuple[int, ...],
        sampler: Sampler = "ddpm",
        num_steps: int | None = None,
        eta: float = 0.0,
        **options,
    ) -> torch.Tensor:
        """x_0 of ``shape`` ``(B, C, H, W)``, clamped to [-1, 1]: the last step of :meth:`sample_progressive`.

        ``options`` are those of :meth:`sample_progressive` (``generator``, ``clip_denoised``,
        ``progress``, ``x_T``, ``labels``, ``guidance_scale``, ``guidance_interval``). In full precision; :func:`ddpm_lib.sampling.generate` adds the measured
        precision, batching and seeding that the command line, the trainer and the notebooks use.
        """
        (last,) = collections.deque(
            self.sample_progressive(model, shape, sampler, num_steps, eta, **options), maxlen=1
        )
        return last.x_prev.clamp(-1.0, 1.0)


def model_device(model: Model) -> torch.device:
    """The device of the model's parameters (the CPU for a parameter-free callable)."""
    if isinstance(model, nn.Module):
        for p in model.parameters():
            return p.device
    return torch.device("cpu")
