"""The README's measured tables and the prose beside them are the stored results, rounded as printed.

The ladder table (benchmarks/ladder.json), the guidance table and the guided-step cost table
(benchmarks/guidance_study.json) are parsed cell by cell and compared with the JSON; every decimal
number in the bullets under a table must be one of that table's printed numbers or a figure derived here
from the same JSON, so a re-measured JSON or an edited sentence cannot drift apart unnoticed.
"""

import json
import re
import statistics
from pathlib import Path

import pytest
import torch

from ddpm_lib.schedules import make_betas, terminal_signal
from ddpm_lib.training import ema_decay

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
TEACHING = (ROOT / "TEACHING.md").read_text(encoding="utf-8")
FLAT = " ".join(README.split())  # the README with every line break and run of spaces as one space
LADDER = json.loads((ROOT / "benchmarks" / "ladder.json").read_text())
GUIDANCE = json.loads((ROOT / "benchmarks" / "guidance_study.json").read_text())
RUNGS = ("paper", "+cosine", "+T500", "+v", "+min-snr-5", "-attention")
DECIMAL = re.compile(r"(?<![\d.])\d+\.\d+(?!\.?\d)")  # 1.67x and 97.3% count; 2.11.0 does not


def table(text: str, header_start: str) -> tuple[list[list[str]], int, int]:
    """The rows (cells stripped) of the first Markdown table whose header starts with ``header_start``,
    and where the table starts and ends in ``text``."""
    start = text.index(header_start)
    lines, end = [], start
    for line in text[start:].splitlines(keepends=True):
        if not line.startswith("|"):
            break
        lines.append(line)
        end += len(line)
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines[2:]]
    return rows, start, end


def check_cell(cell: str, mean: float, std: float | None = None) -> None:
    """``cell`` prints ``mean`` (and ``± std``) at the digits it shows; a missing ``±`` means the std rounds to 0."""
    value, _, spread = cell.replace("*", "").partition("±")
    value, spread = value.strip(), spread.strip()
    digits = len(value.partition(".")[2])
    assert value == f"{mean:.{digits}f}", (cell, mean)
    if std is None:
        assert not spread, cell
    elif spread:
        assert spread == f"{std:.{len(spread.partition('.')[2])}f}", (cell, std)
    else:
        assert round(std, digits) == 0, (cell, std)


def decimals_in(text: str) -> set[str]:
    return set(DECIMAL.findall(text.replace("$", " ")))


def printed_numbers(rows: list[list[str]]) -> set[str]:
    return set().union(*(decimals_in(" ".join(r)) for r in rows))


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


# --- the ladder ---------------------------------------------------------------------------------------


def ladder_final(name: str) -> list[dict]:
    return [seed["curve"][-1] for seed in LADDER["runs"][name]["seeds"]]


LADDER_ROWS, _, LADDER_END = table(README, "| recipe | its change | steps | seeds |")


def test_ladder_table_has_every_run_once():
    names = [re.match(r"`([^`]+)`", r[0]).group(1) for r in LADDER_ROWS if r[0].startswith("`")]
    assert sorted(names) == sorted(LADDER["runs"])
    assert names[: len(RUNGS)] == list(RUNGS)  # the rungs in the ladder's order, then the arms


@pytest.mark.parametrize(
    "row", [r for r in LADDER_ROWS if r[0].startswith("`")], ids=lambda r: r[0]
)
def test_ladder_row_is_the_json(row):
    name = re.match(r"`([^`]+)`", row[0]).group(1)
    final = ladder_final(name)
    _, _, steps, seeds, fid, raw_fid, precision, recall = row
    assert {c["step"] for c in final} == {int(steps.replace(",", ""))}
    assert int(seeds) == len(final)
    check_cell(fid, *mean_std([c["fid"] for c in final]))
    check_cell(raw_fid, *mean_std([c["raw"]["fid"] for c in final]))
    check_cell(precision, statistics.fmean(c["precision"] for c in final))
    check_cell(recall, statistics.fmean(c["recall"] for c in final))


def test_ladder_real_vs_real_row_and_protocol():
    row = next(r for r in LADDER_ROWS if r[0].startswith("real vs real"))
    baseline = ladder_final("paper")[0]["baseline"]
    check_cell(row[4], baseline["fid"])
    check_cell(row[6], baseline["precision"])
    check_cell(row[7], baseline["recall"])
    budget = LADDER["settings"]["budget_cpu_minutes"]
    assert f"**{budget:g} minutes of the 2-core AMD EPYC with AVX2 only**" in FLAT
    for shape in ("attention", "no-attention"):
        s_per_step = LADDER["cpu_timing"]["speeds"][shape]["s_per_step"]
        steps = round(budget * 60 / s_per_step)
        assert re.search(
            rf"{s_per_step:.3f} s (per step )?with(out)? ?(attention )?\({steps} steps\)", FLAT
        )


def ladder_derived() -> set[str]:
    """Figures the ladder's bullets derive from the JSON and the library rather than read from the table."""
    steps = ladder_final("-attention")[0]["step"]
    runs = [c for name in RUNGS for c in ladder_final(name)]
    ema_wins = sum(c["fid"] < c["raw"]["fid"] for c in runs)
    assert f"in {ema_wins} of the {len(runs)} rung runs" in FLAT
    warm = ema_decay(0.999, True, torch.tensor(float(steps))).item()
    assert f"0.999^{{{steps}}} = {0.999**steps:.2f}" in FLAT
    signals = {T: terminal_signal(make_betas("linear", T)) for T in (500, 1000)}
    return {
        "0.999",
        f"{0.999**steps:.2f}",
        f"{warm:.3f}",
        f"{signals[500]:.3f}",
        f"{signals[1000]:.4f}",
    }


def test_ladder_bullets_quote_the_table():
    bullets = README[LADDER_END : README.index("### The first study")]
    unexplained = decimals_in(bullets) - printed_numbers(LADDER_ROWS) - ladder_derived()
    assert not unexplained, f"not in the table nor derived from the JSON: {unexplained}"


def test_teaching_quotes_the_ladder():
    def fid(name):
        return mean_std([c["fid"] for c in ladder_final(name)])

    for text in (
        f"FID {fid('x0+min-snr-5')[0]:.1f} and $\\epsilon$ {fid('eps+min-snr-5')[0]:.1f} with one seed each",
        "against {:.1f} ± {:.1f} for $v$".format(*fid("-attention")),
        f"scored FID {fid('linear-T500')[0]:.1f} with one seed",
        "against {:.1f} ± {:.1f} for the paper's $T = 1000$".format(*fid("paper")),
        f"scored FID {fid('no-ema-warmup')[0]:.1f} where the raw weights",
        f"scored {ladder_final('no-ema-warmup')[0]['raw']['fid']:.1f}",
    ):
        assert text in " ".join(TEACHING.split()), text


# --- guidance -----------------------------------------------------------------------------------------

STUDY = GUIDANCE["study"]
GUIDANCE_ROWS, _, GUIDANCE_END = table(README, "| guidance $w$ | passes per step |")
COST_ROWS, COST_START, COST_END = table(README, "| batch B | unguided step |")


def study_row(first_cell: str) -> dict:
    """The JSON row a table row's first cell names: a scale, a scale on an interval, or the unconditional model."""
    if first_cell.startswith("the unconditional"):
        return STUDY["unconditional"]
    scale, lo, hi = re.match(r"([\d.]+)(?:, only at t in \[(\d+), (\d+)\])?", first_cell).groups()
    interval = [int(lo), int(hi)] if lo else None
    (row,) = [
        r
        for r in STUDY["rows"]
        if r["guidance_scale"] == float(scale) and r["guidance_interval"] == interval
    ]
    return row


def test_guidance_table_has_every_row_once():
    named = [r for r in GUIDANCE_ROWS if not r[0].startswith("real vs real")]
    assert len(named) == len(STUDY["rows"]) + 1
    assert len({id(study_row(r[0])) for r in named}) == len(named)


@pytest.mark.parametrize(
    "row", [r for r in GUIDANCE_ROWS if not r[0].startswith("real")], ids=lambda r: r[0]
)
def test_guidance_row_is_the_json(row):
    scores = study_row(row[0])
    _, passes, accuracy, fid, kid, precision, recall = row
    assert passes == f"{scores.get('cost', 1.0):g}"
    check_cell(accuracy.partition("(")[0], scores["accuracy"], scores["accuracy_std"])
    check_cell(fid, scores["fid"], scores["fid_std"])
    check_cell(kid, scores["kid_mean"])
    check_cell(precision, scores["precision"], scores["precision_std"])
    check_cell(recall, scores["recall"], scores["recall_std"])


def test_guidance_real_vs_real_row_and_protocol():
    row = next(r for r in GUIDANCE_ROWS if r[0].startswith("real vs real"))
    baseline = STUDY["rows"][0]["baseline"]
    assert row[0] == f"real vs real ({STUDY['settings']['num_samples']} test images)"
    for cell, key in zip(row[3:], ("fid", "kid_mean", "precision", "recall")):
        check_cell(cell, baseline[key])
    settings = STUDY["settings"]
    assert (
        f"per scale, {settings['sets']} independent sets of {settings['num_samples']} samples"
        in FLAT
    )
    assert f"(DDIM-{settings['steps']}, $\\eta = {settings['eta']:g}$" in FLAT
    assert f"The whole study took {STUDY['meta']['seconds']:.0f} s" in FLAT
    assert STUDY["unconditional"]["checkpoint"] == "pretrained_toy_cars_32.pt"
    assert STUDY["unconditional"]["step"] == STUDY["step"] == 3600


def test_guidance_bullets_quote_the_table():
    bullets = README[GUIDANCE_END:COST_START]
    unconditional = STUDY["unconditional"]
    unguided = STUDY["rows"][0]
    intervals = [r for r in STUDY["rows"] if r["guidance_interval"]]
    assert min(r["accuracy"] for r in intervals) >= 0.99
    half_recall = f"{unconditional['recall'] / 2:.3f}"
    assert f"half the unconditional model's, {half_recall})" in " ".join(bullets.split())
    derived = {half_recall, "0.99", f"{100 * unguided['accuracy']:.1f}"}
    unexplained = decimals_in(bullets) - printed_numbers(GUIDANCE_ROWS) - derived
    assert not unexplained, f"not in the table nor derived from the JSON: {unexplained}"


def test_cost_table_is_the_timing():
    timing = GUIDANCE["timing"]
    assert len(COST_ROWS) == len(timing["rows"])
    for cells, row in zip(COST_ROWS, timing["rows"]):
        assert cells == [
            str(row["batch"]),
            f"{row['unguided_ms']:.1f} ms",
            f"{row['guided_ms']:.1f} ms",
            f"{row['ratio']:.2f}x",
        ]
    assert f"{timing['threads']} threads, {timing['precision']} as `auto` chose" in FLAT


def test_cost_prose_quotes_the_timing():
    prose = README[COST_END : README.index("## The CPU recipe")]
    largest = GUIDANCE["timing"]["rows"][-1]
    guided = [r for r in STUDY["rows"] if r["guidance_interval"]][0]
    steps = STUDY["settings"]["steps"]
    n_guided = round((guided["cost"] - 1) * steps)
    assert f"Guiding {n_guided} of the {steps} steps" in " ".join(prose.split())
    part = ((steps - n_guided) * largest["unguided_ms"] + n_guided * largest["guided_ms"]) / (
        steps * largest["unguided_ms"]
    )
    derived = {f"{part:.2f}", "1.2"}  # 1.2x: the target a guided step was held to
    unexplained = decimals_in(prose) - printed_numbers(COST_ROWS) - derived
    assert not unexplained, unexplained


def test_conditional_model_cpu_fallback_is_the_measured_step():
    s_per_step = LADDER["cpu_timing"]["speeds"]["no-attention"]["s_per_step"]
    assert f"at the {s_per_step:.2f} s per step measured" in FLAT
    assert f"3,600 steps take about {3600 * s_per_step / 60:.0f} minutes" in FLAT


# --- the samplers and flow matching (benchmarks/samplers.json) -----------------------------------------

SAMPLERS = json.loads((ROOT / "benchmarks" / "samplers.json").read_text())
SAMPLER_ROWS, _, SAMPLER_END = table(README, "| sampler and levels | steps | NFE |")
MINUTES_ROWS, MINUTES_START, MINUTES_END = table(README, "| sampler and levels | NFE | flow FID |")


def test_sampler_table_has_every_run_once_and_is_the_json():
    shipped = SAMPLERS["models"]["shipped"]
    runs = {(r["label"], r["steps"]): r for r in shipped["runs"]}
    seen = []
    for label, steps, nfe, fid, precision, recall, seconds in SAMPLER_ROWS:
        if label.startswith("real vs real"):
            for cell, key in ((fid, "fid"), (precision, "precision"), (recall, "recall")):
                check_cell(cell, shipped["baseline"][key])
            continue
        run = runs[label, int(steps)]
        assert int(nfe) == run["nfe"]
        check_cell(fid, run["fid"], run["fid_std"])
        check_cell(precision, run["precision"])
        check_cell(recall, run["recall"])
        check_cell(seconds, run["seconds_per_image"])
        seen.append((label, int(steps)))
    assert sorted(seen) == sorted(runs)


def test_equal_minutes_table_is_the_json():
    flow = {(r["label"], r["nfe"]): r for r in SAMPLERS["models"]["flow-708"]["runs"]}
    ddpm = {(r["label"], r["nfe"]): r for r in SAMPLERS["models"]["cpu-708"]["runs"]}
    seen = []
    for label, nfe, flow_fid, ddpm_fid, flow_pr, ddpm_pr, winner in MINUTES_ROWS:
        f, d = flow[label, int(nfe)], ddpm[label, int(nfe)]
        check_cell(flow_fid, f["fid"], f["fid_std"])
        check_cell(ddpm_fid, d["fid"], d["fid_std"])
        for cell, run in ((flow_pr, f), (ddpm_pr, d)):
            precision, recall = cell.split("/")
            check_cell(precision, run["precision"])
            check_cell(recall, run["recall"])
        margin = f["fid_std"] + d["fid_std"]
        lower = (
            "flow"
            if f["fid"] < d["fid"] - margin
            else "DDPM"
            if d["fid"] < f["fid"] - margin
            else None
        )
        assert winner == (lower or "within the spread"), (label, nfe, winner)
        seen.append((label, int(nfe)))
    assert sorted(seen) == sorted(flow.keys() & ddpm.keys())


def sampler_derived() -> set[str]:
    """The figures the samplers' bullets derive from the JSON: the choice's speedups and the rule's 0.03."""
    choice = SAMPLERS["choice"]
    return {f"{choice['speedup']:.1f}", f"{choice['wall_speedup']:.1f}", "0.03"}


def test_sampler_bullets_quote_the_tables():
    bullets = (
        README[SAMPLER_END:MINUTES_START] + README[MINUTES_END : README.index("## The GPU path")]
    )
    numbers = printed_numbers(SAMPLER_ROWS) | printed_numbers(MINUTES_ROWS) | sampler_derived()
    unexplained = decimals_in(bullets) - numbers
    assert not unexplained, f"not in the tables nor derived from the JSON: {unexplained}"


def test_the_cli_default_is_the_measured_choice():
    from ddpm_lib.samplers import DEFAULT_SAMPLER, DEFAULT_STEPS

    fastest = SAMPLERS["choice"]["fastest_matching"]
    assert (DEFAULT_SAMPLER, DEFAULT_STEPS) == (fastest["sampler"], fastest["steps"])
    assert fastest["eta"] in (None, 1.0)  # the command lines' DDIM eta is 1 unless --eta is given
