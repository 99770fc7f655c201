"""The exercise guard: an answer that calls the function it should derive fails, one that derives it passes."""

import math

import pytest
import torch

from ddpm_lib import schedules
from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.grading import names_used, refusing
from ddpm_lib.schedules import make_betas

DIFFUSION = GaussianDiffusion(make_betas("linear", 10))


def by_hand(t):
    return math.sqrt(float(torch.cumprod(1 - make_betas("linear", 10), 0)[t]))


def by_library(t):
    return float(schedules.terminal_signal(make_betas("linear", t + 1)))


def by_alias(t):
    return terminal_signal(make_betas("linear", t + 1))  # noqa: F821 (bound below, as a notebook would)


def by_bound_method(t):
    return snr(torch.tensor([t]))  # noqa: F821


def test_an_answer_that_calls_a_refused_function_fails_and_one_that_derives_it_passes():
    places = [(schedules, "terminal_signal")]
    expected = schedules.terminal_signal(make_betas("linear", 10))
    with refusing(*places, answer=by_hand):
        got = by_hand(9)
    assert got == pytest.approx(expected)
    with pytest.raises(AssertionError, match="schedules.terminal_signal"), refusing(*places):
        by_library(9)
    # restored on exit
    assert schedules.terminal_signal(make_betas("linear", 10)) == pytest.approx(by_hand(9))


def test_names_the_answers_module_holds_are_refused_too():
    globals()["terminal_signal"] = schedules.terminal_signal
    globals()["snr"] = DIFFUSION.snr  # a bound method
    try:
        with pytest.raises(AssertionError, match="terminal_signal"):
            with refusing((schedules, "terminal_signal"), answer=by_alias):
                by_alias(9)
        with pytest.raises(AssertionError, match="snr"):
            with refusing((GaussianDiffusion, "snr"), answer=by_bound_method):
                by_bound_method(3)
        assert globals()["terminal_signal"] is schedules.terminal_signal
        assert by_bound_method(3) == DIFFUSION.snr(torch.tensor([3]))
    finally:
        del globals()["terminal_signal"], globals()["snr"]


def test_building_a_class_and_namespace_entries_can_be_refused():
    namespace = {"f": abs}
    with refusing((torch.nn.Linear, "__init__"), (namespace, "f")):
        with pytest.raises(AssertionError, match=r"Linear\(\)"):
            torch.nn.Linear(2, 2)
        with pytest.raises(AssertionError, match="the answer calls f"):
            namespace["f"](-1)
    assert torch.nn.Linear(2, 2).in_features == 2 and namespace["f"](-1) == 1
    with pytest.raises(AttributeError, match="no 'nope'"):
        with refusing((schedules, "nope")):
            pass


def test_names_used_reads_inner_functions():
    def answer(x):
        def inner():
            return torch.sigmoid(x)

        return inner()

    assert {"torch", "sigmoid"} <= names_used(answer)
