"""Timestep sliders for the notebooks (ipywidgets), each with a Play button and a static twin for readers on GitHub.

Four views, each in forms that draw the same panels with the same numbers:

| view | one position (matplotlib) | slider (ipywidgets) | several positions (one Figure) |
| --- | --- | --- | --- |
| the schedules | :func:`schedule_view` | :func:`schedule_explorer` | :func:`schedule_static` |
| the forward process | :func:`forward_view` | :func:`forward_explorer` | :func:`forward_static` |
| a reverse trajectory | :func:`trajectory_view` | :func:`trajectory_explorer` | :func:`trajectory_static` |
| guided samples by class and scale | | :func:`guidance_explorer` | :func:`guidance_static` |

The forward and trajectory sliders precompute every position as PNG bytes (:class:`Frame`: panels
composed as one uint8 array, upscaled nearest-neighbour, encoded once) and swap them into an
``ipywidgets.Image``, so they follow the mouse while dragging (``continuous_update=True``). The
schedule slider draws matplotlib plots on demand, so it updates on release and caches what it drew.
An explorer is an ``ipywidgets.VBox`` carrying ``.slider``, ``.play``, ``.image``, ``.text`` and, for
the precomputed ones, ``.frames`` and ``.frame`` (the one shown); tests set ``.slider.value`` and read them.

Measured with ``time.perf_counter`` on a 2-core AMD EPYC, one thread (ranges: an idle machine, then one
shared with other jobs). Moving a precomputed slider costs 0.03-0.05 ms in the kernel (plus sending
~20 KB (forward, 32x32 image) or ~35-100 KB (trajectory, 4-16 images) to the browser); precomputing
costs 27-60 ms a frame for the forward slider (3-6 s for 101 frames) and 6-20 ms a frame for the
trajectory (1-2 s for 100). A schedule position costs 0.35-1 s to draw and encode the first time,
under 0.5 ms when revisited.

Pages without a kernel (the course website, a notebook viewer): every explorer also answers
``text/html`` (:func:`frames_html`): the precomputed frames as base64 PNGs inside the output, an
``<input type=range>`` (and a ``<select>`` for the guidance classes) and a few lines of inline
JavaScript that swap them, with no other script. JupyterLab keeps showing the ipywidgets view (its
widget renderer ranks first); the website's build prefers the HTML. A page copy carries at most
:data:`PAGE_BYTES` of PNG (evenly spaced positions when the frames weigh more). The schedule explorer
redraws on demand, so its page copy shows the position drawn and says that it needs a kernel.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.plotting import plot_schedules, to_numpy_image
from ddpm_lib.schedules import SCHEDULES, make_betas, terminal_signal

_GAP = 8  # white pixels between the panels of a frame
PAGE_BYTES = 1_000_000  # PNG in one explorer's page copy, at most (base64 adds a third)


@dataclass(frozen=True)
class Frame:
    """One precomputed slider position: ``png`` (the bytes shown), ``caption`` (HTML) and the numbers in it."""

    t: int
    png: bytes
    caption: str
    stats: dict[str, float] = field(default_factory=dict)


def _png(img: np.ndarray, scale: int) -> bytes:
    """A uint8 ``(H, W, 3)`` array upscaled ``scale`` times nearest-neighbour, as PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img.repeat(scale, 0).repeat(scale, 1)).save(buf, format="png", compress_level=6)
    return buf.getvalue()


def _hstack(panels: Sequence[np.ndarray]) -> np.ndarray:
    """uint8 ``(H, W_i, 3)`` panels of one height side by side with white gaps."""
    gap = np.full((panels[0].shape[0], _GAP, 3), 255, np.uint8)
    return np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)


# ------------------------------------------------------------------------------------------ schedules
def _schedule_title(schedule: str, num_timesteps: int) -> str:
    left = terminal_signal(make_betas(schedule, num_timesteps))
    return f"{schedule}, T={num_timesteps}: signal left at the last step sqrt(bar-alpha_T) = {left:.4f}"


def schedule_view(schedule: str = "linear", num_timesteps: int = 1000):
    """The four schedule plots with ``schedule`` highlighted and its signal left at the last step in the title."""
    fig = plot_schedules(num_timesteps, highlight=schedule)
    fig.suptitle(_schedule_title(schedule, num_timesteps), y=1.02)
    return fig


def schedule_static(
    positions: Sequence[tuple[str, int]] = (("linear", 300), ("linear", 1000), ("cosine", 300)),
):
    """The schedule slider at several ``(schedule, T)`` positions, one row each: the same four plots and title."""
    fig = plt.figure(figsize=(16, 3.8 * len(positions)), layout="constrained")
    for sub, (schedule, num_timesteps) in zip(
        fig.subfigures(len(positions), 1, squeeze=False)[:, 0], positions
    ):
        plot_schedules(num_timesteps, highlight=schedule, axes=sub.subplots(1, 4))
        sub.suptitle(_schedule_title(schedule, num_timesteps))
    return fig


# ------------------------------------------------------------------------------------ forward process
def _forward_stats(diffusion: GaussianDiffusion, x_t: torch.Tensor, t: int) -> dict[str, float]:
    ab = diffusion.alphas_cumprod[t].item()
    return {
        "sqrt_alphas_cumprod": ab**0.5,
        "sqrt_one_minus_alphas_cumprod": (1 - ab) ** 0.5,
        "std": x_t.std().item(),
    }


def _forward_title(s: dict[str, float]) -> str:
    return rf"$\sqrt{{\bar\alpha_t}}$={s['sqrt_alphas_cumprod']:.3f}, $\sqrt{{1-\bar\alpha_t}}$={s['sqrt_one_minus_alphas_cumprod']:.3f}, std={s['std']:.3f}"


def _histogram(ax, x_t: torch.Tensor, legend: bool = True) -> None:
    """x_t's pixel histogram against the N(0, 1) density that sampling starts from."""
    grid = np.linspace(-4, 4, 200)
    heights, _, _ = ax.hist(
        x_t.flatten().numpy(),
        bins=60,
        range=(-4, 4),
        density=True,
        alpha=0.6,
        label="pixels of $x_t$",
    )
    ax.plot(grid, np.exp(-(grid**2) / 2) / np.sqrt(2 * np.pi), "k--", label="N(0, 1)")
    ax.set_ylim(0, max(0.5, 1.08 * heights.max()))
    if legend:
        ax.legend(loc="upper right", fontsize=8)


def _draw_forward(
    axes, diffusion: GaussianDiffusion, x0: torch.Tensor, t: int, noise: torch.Tensor
) -> None:
    x_t = diffusion.q_sample(x0[None], torch.tensor([t]), noise[None])[0]
    for ax, img, title in zip(
        axes,
        [x0, noise.clamp(-1, 1), x_t.clamp(-1, 1)],
        ["$x_0$", r"noise $\epsilon$", f"$x_t$, t={t}"],
    ):
        ax.imshow(to_numpy_image(img), interpolation="nearest")
        ax.set_title(title)
        ax.set_axis_off()
    _histogram(axes[3], x_t)
    axes[3].set_title(_forward_title(_forward_stats(diffusion, x_t, t)), fontsize=9)


def forward_view(diffusion: GaussianDiffusion, x0: torch.Tensor, t: int, noise: torch.Tensor):
    """x_0, the noise, x_t (Eq. 4) and x_t's pixel histogram against N(0, 1) at one timestep ``t``; x0, noise ``(3, H, W)``."""
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.2), gridspec_kw={"width_ratios": [1, 1, 1, 1.6]})
    _draw_forward(axes, diffusion, x0, t, noise)
    fig.tight_layout()
    return fig


def _noise_for(x0: torch.Tensor, seed: int) -> torch.Tensor:
    return torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))


def forward_static(
    diffusion: GaussianDiffusion, x0: torch.Tensor, ts: Sequence[int], seed: int = 0
):
    """The forward slider at timesteps ``ts``, one row each (:func:`forward_view`'s panels, the explorer's noise for ``seed``)."""
    noise = _noise_for(x0, seed)
    fig, axes = plt.subplots(
        len(ts),
        4,
        figsize=(13, 3.0 * len(ts)),
        squeeze=False,
        gridspec_kw={"width_ratios": [1, 1, 1, 1.6]},
    )
    for row, t in zip(axes, ts):
        _draw_forward(row, diffusion, x0, int(t), noise)
    fig.tight_layout()
    return fig


def forward_timesteps(num_timesteps: int, num_frames: int = 100) -> list[int]:
    """About ``num_frames`` evenly spaced timesteps on a round step, always including 0 and T-1 (T=1000: 0, 10, ..., 990, 999)."""
    step = max(1, round((num_timesteps - 1) / max(1, num_frames - 1)))
    return sorted(set(range(0, num_timesteps, step)) | {num_timesteps - 1})


def forward_frames(
    diffusion: GaussianDiffusion,
    x0: torch.Tensor,
    ts: Sequence[int],
    noise: torch.Tensor,
    scale: int | None = None,
) -> list[Frame]:
    """One :class:`Frame` per timestep: x_0 | noise | x_t | histogram composed as one PNG, upscaled ``scale`` times (default: to about 128 px)."""
    scale = scale or max(1, 128 // x0.shape[-2])
    height = x0.shape[-2] * scale
    # one small figure, redrawn per frame
    hist_fig = Figure(figsize=(1.9 * height / 100, height / 100), dpi=100)
    canvas, ax = FigureCanvasAgg(hist_fig), hist_fig.add_subplot()
    hist_fig.subplots_adjust(left=0.1, right=0.98, bottom=0.12, top=0.97)
    fixed = [to_numpy_image(x0), to_numpy_image(noise.clamp(-1, 1))]
    x_ts = diffusion.q_sample(
        x0.expand(len(ts), *x0.shape), torch.tensor(list(ts)), noise.expand(len(ts), *x0.shape)
    )
    _histogram(ax, x_ts[0], legend=False)  # drawn once; each frame only moves the bars
    ax.tick_params(labelsize=6, pad=1)
    frames = []
    for t, x_t in zip(ts, x_ts):
        heights, _ = np.histogram(x_t.flatten().numpy(), bins=60, range=(-4, 4), density=True)
        for bar, h in zip(ax.patches, heights):
            bar.set_height(h)
        ax.set_ylim(0, max(0.5, 1.08 * heights.max()))
        canvas.draw()
        hist = np.asarray(canvas.buffer_rgba())[..., :3]
        img = _hstack(
            [
                p.repeat(scale, 0).repeat(scale, 1)
                for p in [*fixed, to_numpy_image(x_t.clamp(-1, 1))]
            ]
            + [hist]
        )
        s = _forward_stats(diffusion, x_t, int(t))
        caption = (
            f"<b>t = {int(t)}</b> &nbsp; √ᾱ<sub>t</sub> = {s['sqrt_alphas_cumprod']:.3f}, "
            f"√(1−ᾱ<sub>t</sub>) = {s['sqrt_one_minus_alphas_cumprod']:.3f}, pixel std of x<sub>t</sub> = {s['std']:.3f}"
            "<br><small>x<sub>0</sub> | noise ε | x<sub>t</sub> = √ᾱ<sub>t</sub> x<sub>0</sub> + √(1−ᾱ<sub>t</sub>) ε (Eq. 4)"
            " | pixels of x<sub>t</sub> against N(0, 1) (dashed)</small>"
        )
        frames.append(Frame(int(t), _png(img, 1), caption, s))
    return frames


# ------------------------------------------------------------------------------------ reverse process
def _trajectory_panels(
    trajectory: dict, index: int, nrow: int | None, num_images: int | None
) -> list[np.ndarray]:
    sl = slice(None, num_images)
    return [
        to_numpy_image(trajectory["x_t"][index][sl], nrow),
        to_numpy_image(trajectory["x0_pred"][index][sl], nrow),
    ]


def _draw_trajectory(
    axes, trajectory: dict, index: int, nrow: int | None = None, num_images: int | None = None
) -> None:
    t = int(trajectory["timesteps"][index])
    for ax, img, title in zip(
        axes,
        _trajectory_panels(trajectory, index, nrow, num_images),
        [f"$x_t$ at t={t}", rf"predicted $\hat x_0$ at t={t}"],
    ):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(title)
        ax.set_axis_off()


def trajectory_view(trajectory: dict, index: int, nrow: int | None = None):
    """Step ``index`` of a reverse trajectory from :func:`ddpm_lib.sampling.trajectory`: x_t and hat-x_0."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.6))
    _draw_trajectory(axes, trajectory, index, nrow)
    fig.tight_layout()
    return fig


def trajectory_static(
    trajectory: dict, indices: Sequence[int], nrow: int | None = None, num_images: int | None = None
):
    """The trajectory slider at steps ``indices``, one column each: x_t on top, hat-x_0 below, titled with t.

    ``num_images``: show only the first images of the batch (all by default).
    """
    fig, axes = plt.subplots(2, len(indices), figsize=(2.6 * len(indices), 5.6), squeeze=False)
    for col, index in zip(axes.T, indices):
        _draw_trajectory(col, trajectory, int(index), nrow, num_images)
    fig.tight_layout()
    return fig


def trajectory_frames(
    trajectory: dict,
    nrow: int | None = None,
    num_images: int | None = None,
    scale: int | None = None,
) -> list[Frame]:
    """One :class:`Frame` per kept step: the x_t grid | the hat-x_0 grid, upscaled to about 256 pixels tall."""
    steps = len(trajectory["timesteps"])
    scale = scale or max(1, 256 // _trajectory_panels(trajectory, 0, nrow, num_images)[0].shape[0])
    frames = []
    for i in range(steps):
        panels = _trajectory_panels(trajectory, i, nrow, num_images)
        t = int(trajectory["timesteps"][i])
        caption = (
            f"<b>t = {t}</b> (step {i} of {steps - 1})<br><small>x<sub>t</sub> (left) | "
            "predicted x̂<sub>0</sub> = (x<sub>t</sub> − √(1−ᾱ<sub>t</sub>) ε<sub>θ</sub>) / √ᾱ<sub>t</sub> (right)</small>"
        )
        frames.append(Frame(t, _png(_hstack(panels), scale), caption, {"step": i}))
    return frames


# ------------------------------------------------------------------------------ pages without a kernel
_KERNEL_NOTE = (
    "In JupyterLab with a running kernel this cell shows the same explorer as ipywidgets."
)

# Reads the frames from the JSON beside it; the range (and the select) pick the picture; play steps.
_FRAMES_JS = """(function (root) {
  var d = JSON.parse(root.querySelector('script[type="application/json"]').textContent);
  var img = root.querySelector('img'), cap = root.querySelector('.ddpm-caption');
  var range = root.querySelector('input[type=range]'), out = root.querySelector('output');
  var sel = root.querySelector('select'), play = root.querySelector('button'), timer = null;
  function show() {
    var k = sel ? sel.selectedIndex : 0, i = +range.value;
    img.src = 'data:image/png;base64,' + d.pngs[k][i];
    cap.innerHTML = d.captions[k][i];
    out.textContent = d.labels[i];
  }
  range.addEventListener('input', show);
  if (sel) sel.addEventListener('change', show);
  play.addEventListener('click', function () {
    if (timer) { clearInterval(timer); timer = null; play.textContent = 'play'; return; }
    play.textContent = 'pause';
    timer = setInterval(function () {
      range.value = (+range.value + 1) % (+range.max + 1); show();
    }, d.interval);
  });
})(document.currentScript.parentNode);"""


def _evenly(n: int, k: int) -> list[int]:
    """At most ``k`` (at least 2) of the indices 0 .. n-1, evenly spaced, both ends kept; all when k >= n."""
    if k >= n:
        return list(range(n))
    k = max(2, k)
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


def frames_html(
    frames: Sequence[Sequence[Frame]],
    labels: Sequence[str],
    name: str,
    value: int = 0,
    options: Sequence[str] = (),
    option_name: str = "",
    option: int = 0,
    interval_ms: int = 100,
    max_bytes: int = PAGE_BYTES,
) -> str:
    """A frame explorer as one self-contained HTML block that works on a static page (no kernel).

    ``frames[k][i]``: the picture at slider position i (labelled ``labels[i]``) for dropdown entry k
    (``options[k]``; one row and no dropdown when ``options`` is empty). The PNGs travel base64 in a
    JSON script; an ``<input type=range>`` named ``name`` (and a ``<select>``) swaps them, a play
    button steps every ``interval_ms``. Positions are thinned evenly (ends kept) to stay under
    ``max_bytes`` of PNG; it starts on entry ``option`` at the kept position nearest ``value``.
    """
    per_position = max(sum(len(row[i].png) for row in frames) for i in range(len(labels)))
    keep = _evenly(len(labels), max(1, max_bytes // max(1, per_position)))
    start = min(range(len(keep)), key=lambda j: abs(keep[j] - value))
    data = {
        "labels": [str(labels[i]) for i in keep],
        "captions": [[row[i].caption for i in keep] for row in frames],
        "pngs": [[_b64(row[i].png) for i in keep] for row in frames],
        "interval": interval_ms,
    }
    select = ""
    if options:
        entries = "".join(
            f"<option{' selected' if k == option else ''}>{html.escape(str(o))}</option>"
            for k, o in enumerate(options)
        )
        select = f"<label>{html.escape(option_name)} <select>{entries}</select></label> "
    shown = frames[option][keep[start]]
    thinned = f"{len(keep)} of {len(labels)} positions" if len(keep) < len(labels) else "positions"
    return (
        '<div class="ddpm-explorer">'
        f'<div>{select}<button type="button">play</button> <label>{html.escape(name)} '
        f'<input type="range" min="0" max="{len(keep) - 1}" step="1" value="{start}" '
        f'style="vertical-align: middle; width: 16em"></label> '
        f"<output>{html.escape(data['labels'][start])}</output></div>"
        f'<div class="ddpm-caption">{shown.caption}</div>'
        f'<img src="data:image/png;base64,{data["pngs"][option][start]}" alt="{html.escape(name)} explorer"'
        ' style="image-rendering: pixelated; max-width: 100%">'
        f"<div><small>The precomputed frames ({thinned}) travel with this page: the slider works "
        f"without a kernel. {_KERNEL_NOTE}</small></div>"
        '<script type="application/json">'
        + json.dumps(data).replace("</", "<\\/")
        + f"</script><script>{_FRAMES_JS}</script></div>"
    )


def _kernel_only_html(png: bytes, caption: str, what: str) -> str:
    """The picture an explorer drew last, and a note that moving it needs a running kernel."""
    return (
        f'<div class="ddpm-explorer"><div>{caption}</div>'
        f'<img src="data:image/png;base64,{_b64(png)}" alt="{html.escape(what)}"'
        ' style="max-width: 100%">'
        f"<div><small>The {html.escape(what)} redraws its plots for each position, so it needs a "
        "running kernel: open the notebook in JupyterLab to move it. This page shows the position "
        f"it was drawn at. {_KERNEL_NOTE}</small></div></div>"
    )


# ------------------------------------------------------------------------------------------- explorers
def _play_box(slider, trait: str, interval_ms: int, step: int = 1):
    """A Play button jslinked to ``slider.<trait>``, laid out beside it; returns (play, HBox); ``play.link`` is the link."""
    import ipywidgets

    play = ipywidgets.Play(
        value=getattr(slider, trait),
        interval=interval_ms,
        step=step,
        description="play",
        min=0 if trait == "index" else slider.min,
        max=len(slider.options) - 1 if trait == "index" else slider.max,
    )
    play.link = ipywidgets.jslink((play, "value"), (slider, trait))
    return play, ipywidgets.HBox([play, slider])


def _frame_explorer(frames: list[Frame], slider, trait: str, interval_ms: int):
    """An Image showing ``frames[slider.<trait>]`` and an HTML caption, with a Play button."""
    import ipywidgets

    play, controls = _play_box(slider, trait, interval_ms)
    image = ipywidgets.Image(format="png")
    text = ipywidgets.HTML()
    box = ipywidgets.VBox([controls, text, image])
    box.slider, box.play, box.image, box.text, box.frames = slider, play, image, text, frames

    def show(_=None):
        box.frame = frames[getattr(slider, trait)]
        image.value, text.value = box.frame.png, box.frame.caption

    slider.observe(show, trait)
    show()
    labels = [str(o) for o in slider.options] if trait == "index" else list(range(len(frames)))
    box._repr_html_ = lambda: frames_html(
        [frames], labels, slider.description, getattr(slider, trait), interval_ms=interval_ms
    )
    return box


def schedule_explorer(num_timesteps: int = 1000):
    """A dropdown over schedules and a slider over T (Play steps it by 50), drawing :func:`schedule_view` on release.

    The explorer carries ``.figure`` (the last Figure drawn, closed) and caches each position's PNG.
    """
    import ipywidgets

    dropdown = ipywidgets.Dropdown(options=list(SCHEDULES), value="linear", description="schedule")
    slider = ipywidgets.IntSlider(
        value=num_timesteps, min=50, max=2000, step=50, description="T", continuous_update=False
    )
    play, controls = _play_box(slider, "value", interval_ms=1000, step=50)
    image, text = ipywidgets.Image(format="png"), ipywidgets.HTML()
    box = ipywidgets.VBox([dropdown, controls, text, image])
    box.dropdown, box.slider, box.play, box.image, box.text, box.cache = (
        dropdown,
        slider,
        play,
        image,
        text,
        {},
    )

    def show(_=None):
        key = (dropdown.value, slider.value)
        if key not in box.cache:
            box.figure = schedule_view(*key)
            buf = io.BytesIO()
            box.figure.savefig(buf, format="png", dpi=72, bbox_inches="tight")
            plt.close(box.figure)
            box.cache[key] = (buf.getvalue(), box.figure)
        image.value, box.figure = box.cache[key]
        text.value = f"<b>{_schedule_title(*key)}</b>"

    dropdown.observe(show, "value")
    slider.observe(show, "value")
    show()
    box._repr_html_ = lambda: _kernel_only_html(image.value, text.value, "schedule explorer")
    return box


def forward_explorer(
    diffusion: GaussianDiffusion, x0: torch.Tensor, seed: int = 0, num_frames: int = 100
):
    """A slider over t for one image ``x0`` ``(3, H, W)`` with fixed noise: :func:`forward_frames` at :func:`forward_timesteps`.

    The slider offers the precomputed timesteps only (T=1000: 0, 10, ..., 990, 999), so every position is exact.
    """
    import ipywidgets

    ts = forward_timesteps(diffusion.num_timesteps, num_frames)
    frames = forward_frames(diffusion, x0, ts, _noise_for(x0, seed))
    slider = ipywidgets.SelectionSlider(
        options=ts, value=0, description="t", continuous_update=True
    )
    return _frame_explorer(frames, slider, "index", interval_ms=100)


def trajectory_explorer(trajectory: dict, nrow: int | None = None, num_images: int | None = None):
    """A slider over the kept steps of a reverse trajectory (labelled by step index; the caption gives t)."""
    import ipywidgets

    frames = trajectory_frames(trajectory, nrow, num_images)
    last = len(frames) - 1
    slider = ipywidgets.IntSlider(
        value=last, min=0, max=last, step=1, description="step", continuous_update=True
    )
    return _frame_explorer(frames, slider, "value", interval_ms=100)


# ------------------------------------------------------------------------------------------ guidance
def guidance_explorer(
    samples: torch.Tensor,
    class_names: Sequence[str],
    scales: Sequence[float],
    nrow: int | None = None,
    predicted: torch.Tensor | None = None,
):
    """A body-type dropdown and a slider over classifier-free guidance scales w, over precomputed samples.

    ``samples`` ``(K, S, N, C, H, W)`` (float in [-1, 1] or uint8): N samples of class k at scale ``scales[s]``,
    drawn from the same noise for every s, so that moving the slider shows what w alone changes. Each
    position is a :class:`Frame` (``.frames[k][s]``; ``t`` is s, ``stats`` holds ``guidance_scale`` and, with
    ``predicted`` ``(K, S, N)`` classes read by a classifier, ``accuracy``), upscaled to about 256 px tall.
    """
    import ipywidgets

    frames = []
    for k, name in enumerate(class_names):
        row = []
        for s, w in enumerate(scales):
            grid = to_numpy_image(samples[k, s], nrow)
            stats = {"guidance_scale": float(w)}
            caption = f"<b>{name}, w = {w:g}</b> (diffusers' s = w + 1 = {w + 1:g})"
            if predicted is not None:
                stats["accuracy"] = (predicted[k, s] == k).float().mean().item()
                caption += f"; the body-type classifier reads {int((predicted[k, s] == k).sum())} of {samples.shape[2]} as {name}"
            caption += (
                "<br><small>ε̃ = (1 + w) ε<sub>θ</sub>(x<sub>t</sub>, t, y) − w ε<sub>θ</sub>(x<sub>t</sub>, t, ∅)"
                " (Ho &amp; Salimans 2022, Eq. 6); the same starting noise at every w</small>"
            )
            row.append(Frame(s, _png(grid, max(1, 256 // grid.shape[0])), caption, stats))
        frames.append(row)
    dropdown = ipywidgets.Dropdown(
        options=list(class_names), value=class_names[0], description="body type"
    )
    slider = ipywidgets.SelectionSlider(
        options=list(scales), value=scales[0], description="w", continuous_update=True
    )
    play, controls = _play_box(slider, "index", interval_ms=700)
    image, text = ipywidgets.Image(format="png"), ipywidgets.HTML()
    box = ipywidgets.VBox([dropdown, controls, text, image])
    box.dropdown, box.slider, box.play, box.image, box.text, box.frames = (
        dropdown,
        slider,
        play,
        image,
        text,
        frames,
    )

    def show(_=None):
        box.frame = frames[dropdown.index][slider.index]
        image.value, text.value = box.frame.png, box.frame.caption

    dropdown.observe(show, "index")
    slider.observe(show, "index")
    show()
    box._repr_html_ = lambda: frames_html(
        frames,
        [f"{w:g}" for w in scales],
        "w",
        value=slider.index,
        options=class_names,
        option_name="body type",
        option=dropdown.index,
        interval_ms=700,
    )
    return box


def guidance_static(
    samples: torch.Tensor,
    class_names: Sequence[str],
    scales: Sequence[float],
    nrow: int | None = None,
    num_images: int | None = None,
):
    """The guidance explorer's positions as one Figure: a row per class, a column per scale w.

    ``samples`` ``(K, S, N, C, H, W)`` as for :func:`guidance_explorer`; ``num_images``: the first images of each cell only.
    """
    height, width = to_numpy_image(samples[0, 0, :num_images], nrow).shape[:2]
    fig, axes = plt.subplots(
        len(class_names),
        len(scales),
        figsize=(0.6 + 1.7 * len(scales) * width / height, 0.4 + 1.7 * len(class_names)),
        squeeze=False,
    )
    for k, name in enumerate(class_names):
        for s, w in enumerate(scales):
            axes[k, s].imshow(
                to_numpy_image(samples[k, s, :num_images], nrow), interpolation="nearest"
            )
            axes[k, s].set_xticks([])
            axes[k, s].set_yticks([])
            if k == 0:
                axes[k, s].set_title(f"w = {w:g}")
            if s == 0:
                axes[k, s].set_ylabel(name)
    fig.tight_layout()
    return fig
