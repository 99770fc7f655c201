"""Argument checks shared by the library and its command lines: one message style for every bad value.

Each check raises ``ValueError`` naming the argument, the value given and what is allowed, so a
CLI can print the message as it is (``error: ...``) and a notebook reader knows what to change.
"""

from __future__ import annotations

import math
import os
from typing import get_args

import torch


def check_choice(value: object, kind: object, what: str) -> None:
    """Raise when ``value`` is not one of the options of the ``Literal`` ``kind`` (or a tuple of options)."""
    choices = kind if isinstance(kind, tuple) else get_args(kind)
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; valid choices: {', '.join(map(str, choices))}")


def check_int(
    value: object, what: str, minimum: int | None = None, maximum: int | None = None
) -> int:
    """``value`` as an int, refusing bools, floats and values outside ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{what} must be {_range_text(minimum, maximum)}, got {value}")
    return value


def check_bool(value: object, what: str) -> bool:
    """``value`` when it is a bool; anything else (``"no"``, ``0``, ``None``) is refused rather than read as truthy."""
    if not isinstance(value, bool):
        raise ValueError(f"{what} must be True or False, got {value!r}")
    return value


def check_float(
    value: object,
    what: str,
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
) -> float:
    """``value`` as a finite float inside the given bounds (each inclusive unless told otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a number, got {value!r}")
    value = float(value)
    too_low = minimum is not None and (value < minimum if min_inclusive else value <= minimum)
    too_high = maximum is not None and (value > maximum if max_inclusive else value >= maximum)
    if not math.isfinite(value) or too_low or too_high:
        parts = []
        if minimum is not None:
            parts.append(f">{'=' if min_inclusive else ''} {minimum:g}")
        if maximum is not None:
            parts.append(f"<{'=' if max_inclusive else ''} {maximum:g}")
        allowed = (" and ".join(parts)) if parts else ""
        raise ValueError(
            f"{what} must be a finite number{' ' + allowed if allowed else ''}, got {value}"
        )
    return value


def _range_text(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"in [{minimum}, {maximum}]"
    if minimum is not None:
        return f">= {minimum}"
    return f"<= {maximum}"


def check_image_range(x: torch.Tensor, what: str = "x0") -> None:
    """Refuse images that are not float tensors in [-1, 1] (uint8, or floats in 0..255), saying how to convert them."""
    if not x.is_floating_point():
        raise ValueError(
            f"{what} must be a float tensor in [-1, 1], got {x.dtype}; convert uint8 images with ddpm_lib.data.from_uint8"
        )
    lo, hi = float(x.min()), float(x.max())  # min and max propagate NaN
    if math.isnan(lo) or math.isnan(hi):
        raise ValueError(
            f"{what} holds NaN values; check the images (a failed decode or a division by zero upstream)"
        )
    if lo < -1.001 or hi > 1.001:
        raise ValueError(
            f"{what} must lie in [-1, 1], got values in [{lo:.3g}, {hi:.3g}]; scale images with x / 127.5 - 1 (from_uint8)"
        )


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off", "")


def env_flag(name: str, default: bool = False) -> bool:
    """A yes/no environment variable such as ``DDPM_FAST``: 1/0, true/false, yes/no, on/off in any case.

    Unset (or empty) gives ``default``; anything else is refused with a ``ValueError`` rather than read
    as "off" (``DDPM_FAST=ture`` would silently run the slow path).
    """
    value = os.environ.get(name)
    if value is None:
        return default
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return default if word == "" else False
    raise ValueError(
        f"${name} must be one of {', '.join(TRUE_WORDS)} or {', '.join(FALSE_WORDS[:-1])}, got {value!r}"
    )
