"""A procedural, embedded dataset of side-view car images (no download, deterministic).

Each image is drawn from a handful of parameters (body type, colour, proportions, wheel size,
position, scale, facing, sky and road colours) with signed-distance shapes: every pixel's
coverage of a shape is computed from its distance to the shape's edge, on a grid twice as fine
as the output, then averaged down, so edges are anti-aliased. Image ``i`` of a split depends only
on ``(seed, split, i)``: the same on every machine, whatever the dataset's size.
"""

from __future__ import annotations

import colorsys

import numpy as np
import torch
import torch.nn.functional as F

BODY_TYPES: tuple[str, ...] = ("sedan", "hatchback", "suv", "pickup", "sports", "van")
SPLIT_IDS = {"train": 0, "test": 1}

# Per body type, in car lengths: wheel radius, body (beltline) height, cabin quad
# (rear-bottom x, rear-top x, front-top x, front-bottom x, cabin height above the beltline).
_GEOMETRY = {
    "sedan": dict(wheel=0.085, body=0.20, cabin=(0.22, 0.33, 0.58, 0.72, 0.16)),
    "hatchback": dict(wheel=0.09, body=0.21, cabin=(0.04, 0.10, 0.55, 0.70, 0.17)),
    "suv": dict(wheel=0.105, body=0.27, cabin=(0.03, 0.05, 0.62, 0.74, 0.19)),
    "pickup": dict(wheel=0.10, body=0.25, cabin=(0.36, 0.38, 0.58, 0.70, 0.18)),
    "sports": dict(wheel=0.08, body=0.15, cabin=(0.24, 0.40, 0.56, 0.78, 0.11)),
    "van": dict(wheel=0.095, body=0.27, cabin=(0.02, 0.02, 0.72, 0.86, 0.25)),
}

_SKIES = [  # (top colour, horizon colour) in RGB 0..1
    ((0.25, 0.50, 0.85), (0.70, 0.85, 0.97)),  # clear day
    ((0.45, 0.62, 0.85), (0.85, 0.90, 0.95)),  # hazy day
    ((0.55, 0.58, 0.62), (0.80, 0.81, 0.82)),  # overcast
    ((0.30, 0.25, 0.55), (0.98, 0.60, 0.35)),  # sunset
    ((0.10, 0.12, 0.30), (0.45, 0.35, 0.55)),  # dusk
]

# The entries of one image's parameter vector, in order (sizes in car lengths, positions in image fractions,
# colours RGB in 0..1): read by name through PARAM_INDEX, never by position.
PARAM_NAMES: tuple[str, ...] = (
    "body_type",
    "length",
    "cx",
    "ground",
    "facing",
    "body_r",
    "body_g",
    "body_b",
    "sky_top_r",
    "sky_top_g",
    "sky_top_b",
    "sky_bottom_r",
    "sky_bottom_g",
    "sky_bottom_b",
    "road",
    "verge_r",
    "verge_g",
    "verge_b",
    "horizon",
    "wheel",
    "body_height",
    "cabin_rear_bottom",
    "cabin_rear_top",
    "cabin_front_top",
    "cabin_front_bottom",
    "cabin_height",
    "wheel_rear_x",
    "wheel_front_x",
    "hub",
    "tint",
)
PARAM_INDEX = {name: i for i, name in enumerate(PARAM_NAMES)}
NUM_PARAMS = len(PARAM_NAMES)


def sample_params(seed: int, split: str, index: int) -> np.ndarray:
    """The parameters of one image, a float64 vector of length ``NUM_PARAMS``, from its own RNG stream."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    body_type = int(rng.integers(len(BODY_TYPES)))
    geo = _GEOMETRY[BODY_TYPES[body_type]]
    j = lambda s: 1.0 + s * (2 * rng.random() - 1)  # noqa: E731  multiplicative jitter
    length = rng.uniform(0.70, 0.95)  # car length as a fraction of the image width
    slack = (1.0 - length) / 2
    cx = 0.5 + rng.uniform(-0.8, 0.8) * slack
    horizon = rng.uniform(0.50, 0.68)
    ground = rng.uniform(max(horizon + 0.12, 0.78), 0.92)
    facing = 1.0 if rng.random() < 0.5 else -1.0
    if rng.random() < 0.2:  # achromatic: white, silver, grey, black
        v = rng.choice([0.92, 0.75, 0.5, 0.15]) * j(0.05)
        body = (v, v, v)
    else:
        body = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.45, 0.95), rng.uniform(0.45, 0.95))
    sky_top, sky_bottom = _SKIES[int(rng.integers(len(_SKIES)))]
    sky_top = np.clip(np.array(sky_top) * j(0.12), 0, 1)
    sky_bottom = np.clip(np.array(sky_bottom) * j(0.08), 0, 1)
    road = rng.uniform(0.22, 0.48)
    verge = np.clip(
        np.array([0.35, 0.55, 0.25]) * j(0.25)
        if rng.random() < 0.6
        else np.array([0.6, 0.55, 0.45]) * j(0.2),
        0,
        1,
    )
    rb, rt, ft, fb, ch = geo["cabin"]
    wheel = geo["wheel"] * j(0.12)
    return np.array(
        [
            body_type,
            length,
            cx,
            ground,
            facing,
            *body,
            *sky_top,
            *sky_bottom,
            road,
            *verge,
            horizon,
            wheel,
            geo["body"] * j(0.1),
            rb * j(0.08),
            rt * j(0.08),
            ft * j(0.04),
            fb * j(0.03),
            ch * j(0.1),
            rng.uniform(0.16, 0.22),
            rng.uniform(0.78, 0.83),  # rear and front wheel positions
            rng.uniform(0.55, 0.85),  # hub brightness
            rng.uniform(0.55, 0.8),  # window tint
        ],
        dtype=np.float64,
    )


def _box(u, v, x0, x1, y0, y1, r):
    """Signed distance to a rounded box [x0, x1] x [y0, y1] with corner radius r."""
    cx, cy, hx, hy = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2 - r, (y1 - y0) / 2 - r
    qx, qy = (u - cx).abs() - hx, (v - cy).abs() - hy
    return (
        torch.sqrt(qx.clamp(min=0) ** 2 + qy.clamp(min=0) ** 2)
        + torch.maximum(qx, qy).clamp(max=0)
        - r
    )


def _circle(u, v, x, y, r):
    return torch.sqrt((u - x) ** 2 + (v - y) ** 2) - r


def _quad(u, v, pts):
    """Signed distance (exact on edges, approximate at corners) to a convex quad, counter-clockwise points."""
    d = None
    for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1]):
        ex, ey = x1 - x0, y1 - y0
        n = torch.sqrt(ex**2 + ey**2)
        side = ((u - x0) * ey - (v - y0) * ex) / n  # > 0 outside for counter-clockwise points
        d = side if d is None else torch.maximum(d, side)
    return d


def render(params: np.ndarray, image_size: int, supersample: int = 2) -> torch.Tensor:
    """Draw a batch of cars from ``params`` ``(N, NUM_PARAMS)``: uint8 ``(N, 3, image_size, image_size)``."""
    S = image_size * supersample
    p = torch.as_tensor(params, dtype=torch.float32)
    col = lambda name: p[:, PARAM_INDEX[name] : PARAM_INDEX[name] + 3, None, None]  # noqa: E731  (N, 3, 1, 1) colour from its _r entry
    one = lambda name: p[:, PARAM_INDEX[name], None, None]  # noqa: E731  (N, 1, 1) scalar
    body_type, length, cx, ground, facing = (
        one(n) for n in ("body_type", "length", "cx", "ground", "facing")
    )
    grid = (torch.arange(S, dtype=torch.float32) + 0.5) / S
    py, px = grid[None, :, None], grid[None, None, :]  # image coordinates, y down
    # car coordinates: u from the rear (0) to the front (1), v up from the ground, both in car lengths
    u = (px - cx) * facing / length + 0.5
    v = (ground - py) / length
    pix = 1.0 / (S * length)  # one fine pixel in car lengths

    def paint(img, dist, colour, opacity=1.0):
        a = ((0.5 - dist / pix).clamp(0, 1) * opacity)[:, None]
        return img * (1 - a) + colour * a

    # background: sky gradient to the horizon, verge, road
    horizon = one("horizon")
    k = (py / horizon).clamp(0, 1)[:, None]
    img = col("sky_top_r") * (1 - k) + col("sky_bottom_r") * k
    img = torch.where((py > horizon)[:, None], col("verge_r"), img).expand(-1, 3, S, S)
    road_top = (ground - 0.08).clamp(min=horizon + 0.04)
    img = torch.where((py > road_top)[:, None], one("road")[:, None].expand(-1, 3, 1, 1), img)

    wheel, body_h = one("wheel"), one("body_height")
    rb, rt, ft, fb, cabin_h = (
        one(n)
        for n in (
            "cabin_rear_bottom",
            "cabin_rear_top",
            "cabin_front_top",
            "cabin_front_bottom",
            "cabin_height",
        )
    )
    xr, xf, hub, tint = (one(n) for n in ("wheel_rear_x", "wheel_front_x", "hub", "tint"))
    clearance = wheel * 0.9
    body = col("body_r")
    dark = body * 0.55
    # shadow under the car
    img = paint(
        img,
        ((u - 0.5) ** 2 / 0.36 + (v / 0.035) ** 2).sqrt() * 0.035 - 0.035,
        torch.zeros(1, 3, 1, 1),
        0.45,
    )
    # cabin (body colour) and its windows
    top = body_h + cabin_h
    cabin = _quad(u, v, [(rb, body_h - 0.02), (fb, body_h - 0.02), (ft, top), (rt, top)])
    img = paint(img, cabin - 0.01, body)
    m = 0.022
    windows = _quad(
        u,
        v,
        [
            (rb + 2 * m, body_h + 0.005),
            (fb - 2.2 * m, body_h + 0.005),
            (ft - m * 0.6, top - m),
            (rt + m * 0.6, top - m),
        ],
    )
    pillar = (u - (rt + ft) / 2).abs() - 0.012
    glass = torch.stack([tint * 0.75, tint * 0.85, tint], 1)
    img = paint(img, torch.maximum(windows, -pillar), glass)
    # body: a rounded box from the sills to the beltline; the pickup's bed is the rear of it
    img = paint(img, _box(u, v, 0.0, 1.0, clearance, body_h, 0.045), body)
    img = paint(img, _box(u, v, 0.01, 0.99, clearance, clearance + 0.025, 0.01), dark, 0.6)  # sill
    is_pickup = (body_type == BODY_TYPES.index("pickup")).float()
    # bed rail
    img = paint(
        img, _box(u, v, 0.03, rb - 0.02, body_h - 0.025, body_h - 0.012, 0.005), dark, is_pickup
    )
    # lights
    img = paint(
        img,
        _box(u, v, 0.955, 1.0, body_h - 0.07, body_h - 0.035, 0.012),
        torch.tensor([1.0, 0.95, 0.7]).view(1, 3, 1, 1),
    )
    img = paint(
        img,
        _box(u, v, 0.0, 0.03, body_h - 0.07, body_h - 0.035, 0.008),
        torch.tensor([0.85, 0.1, 0.1]).view(1, 3, 1, 1),
    )
    # wheels: arch, tyre, hub
    for x in (xr, xf):
        img = paint(img, _circle(u, v, x, wheel, wheel * 1.18), dark * 0.5)
        img = paint(img, _circle(u, v, x, wheel, wheel), torch.full((1, 3, 1, 1), 0.08))
        img = paint(
            img,
            _circle(u, v, x, wheel, wheel * 0.55),
            torch.cat([hub, hub, hub * 1.02], 1)[:, :, None].view(-1, 3, 1, 1),
        )
        img = paint(img, _circle(u, v, x, wheel, wheel * 0.18), torch.full((1, 3, 1, 1), 0.3))
    img = F.avg_pool2d(img, supersample)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def generate(num_images: int, image_size: int, seed: int = 0, split: str = "train", start: int = 0):
    """Generate images ``start .. start + num_images - 1`` of a split.

    Returns ``(images, labels)``: uint8 ``(N, 3, H, W)`` and int64 body-type labels ``(N,)``.
    """
    if split not in SPLIT_IDS:
        raise ValueError(f"unknown split {split!r}; valid choices: {', '.join(SPLIT_IDS)}")
    params = (
        np.stack([sample_params(seed, split, start + i) for i in range(num_images)])
        if num_images
        else np.zeros((0, NUM_PARAMS))
    )
    images = torch.empty(num_images, 3, image_size, image_size, dtype=torch.uint8)
    # ~0.5M fine pixels per batch keeps the work in cache
    chunk = max(1, 2**19 // (2 * image_size) ** 2)
    for i in range(0, num_images, chunk):
        images[i : i + chunk] = render(params[i : i + chunk], image_size)
    return images, torch.as_tensor(params[:, 0], dtype=torch.int64)


def preview(per_type: int = 8, image_size: int = 32, seed: int = 0) -> torch.Tensor:
    """The first ``per_type`` train images of each body type, one row per type: uint8 ``(6 * per_type, 3, H, W)``."""
    rows: list[list[int]] = [[] for _ in BODY_TYPES]
    i = 0
    while min(len(r) for r in rows) < per_type:
        label = int(sample_params(seed, "train", i)[0])
        if len(rows[label]) < per_type:
            rows[label].append(i)
        i += 1
    params = np.stack([sample_params(seed, "train", j) for row in rows for j in row])
    return render(params, image_size)


def main(argv: list[str] | None = None) -> int:
    """``python -m ddpm_lib.toy_cars``: write the preview grid; a bad option is one ``error:`` line and exit 2."""
    import argparse
    import sys

    from torchvision.utils import save_image

    from ddpm_lib.checks import check_int
    from ddpm_lib.outputs import check_output, file_size_limit_as_error, write_atomic

    parser = argparse.ArgumentParser(
        prog="python -m ddpm_lib.toy_cars",
        description="Save a preview grid of the toy-cars dataset: one row per body type.",
    )
    parser.add_argument("--out", default="assets/toy_cars_preview.png", help="PNG file to write")
    parser.add_argument("--image-size", type=int, default=32, help="8 to 512 pixels")
    parser.add_argument(
        "--per-type", type=int, default=12, help="images per body type (columns), 1 to 256"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    file_size_limit_as_error()
    try:
        for name, lo, hi in (("image_size", 8, 512), ("per_type", 1, 256), ("seed", 0, 2**63 - 1)):
            check_int(getattr(args, name), "--" + name.replace("_", "-"), lo, hi)
        out = check_output(args.out, "--out", (".png",))
        images = preview(args.per_type, args.image_size, args.seed)
        write_atomic(
            out,
            lambda f: save_image(
                images.float() / 255, f, format="png", nrow=args.per_type, padding=1, pad_value=1.0
            ),
        )
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: rows = {', '.join(BODY_TYPES)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
