"""The test suite's time per part, printed at the end of ``make test`` with the CPU kind.

A pytest plugin (``-p tools.suite_times``): it adds up the setup, call and teardown time of every
test by part, one part per notebook and one per unit-test file, and prints a table at the end of
the run: each part's time (summed over its tests; the parts run side by side under pytest-xdist,
so they add up to more than the wall time), the run's wall time, and the CPU kind, since the same
suite takes twice as long on a CPU without bf16 instructions. ``--suite-times-json FILE`` also
writes the table as JSON. Run as a script, it prints the CPU kind alone.

Under ``-n N --dist loadscope`` it also orders the work: pytest-xdist hands out whole parts (a
notebook, a test file), by default the ones with the most tests first; here the part that took
longest in the last run goes first (the times of ``--suite-times-json``, else those recorded in
``tools/suite_times_reference.json``), so that no long part starts last while the other worker idles.
"""

import json
import os
import time
from collections import defaultdict
from pathlib import Path

import pytest

# The budgets the project holds the suite to (DEVELOPERS.md; issue "make test within 5 minutes").
BUDGET_S = {"bf16": 200.0, "no-bf16": 300.0}
REFERENCE = Path(__file__).with_name("suite_times_reference.json")


def cpu_kind() -> tuple[str, str]:
    """``(model name, kind)``: kind is "bf16" where the CPU has AVX-512 BF16 or AMX, else "no-bf16".

    The library's own reading of the CPU (:func:`ddpm_lib.devices.cpu_model_and_flags`), imported
    here, at the end of the run, so that pytest's controller does not load torch before the workers.
    """
    from ddpm_lib.devices import BF16_FLAGS, cpu_model_and_flags

    model, flags = cpu_model_and_flags()
    return model, "bf16" if set(flags) & set(BF16_FLAGS) else "no-bf16"


def describe_cpu() -> str:
    model, kind = cpu_kind()
    what = "with bf16 instructions" if kind == "bf16" else "without bf16 instructions (AVX2)"
    return f"{model}, {os.cpu_count()} cores, {what}"


def _part(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    return Path(path).name


class SuiteTimes:
    def __init__(self, config):
        self.config = config
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = defaultdict(float)
        self.tests: dict[str, int] = defaultdict(int)

    def pytest_runtest_logreport(self, report):
        part = _part(report.nodeid)
        self.seconds[part] += report.duration
        if report.when == "call":
            self.tests[part] += 1

    def pytest_terminal_summary(self, terminalreporter):
        wall = time.perf_counter() - self.start
        notebooks = sorted(p for p in self.seconds if p.endswith(".ipynb"))
        units = sorted(p for p in self.seconds if p not in notebooks)
        unit_total = sum(self.seconds[p] for p in units)
        write = terminalreporter.write_line
        terminalreporter.section("time per part")
        write(f"{'part':<44} {'tests':>6} {'seconds':>8}")
        for p in sorted(units, key=lambda p: -self.seconds[p])[:8]:
            write(f"  {p:<42} {self.tests[p]:>6} {self.seconds[p]:>8.1f}")
        write(
            f"{'unit tests, all ' + str(len(units)) + ' files':<44} "
            f"{sum(self.tests[p] for p in units):>6} {unit_total:>8.1f}"
        )
        for p in notebooks:
            write(f"{p:<44} {self.tests[p]:>6} {self.seconds[p]:>8.1f}")
        workers = getattr(self.config.option, "numprocesses", None) or 1
        _, kind = cpu_kind()
        write(f"wall time {wall:.0f} s on {workers} worker(s); CPU: {describe_cpu()}")
        budget = BUDGET_S[kind]
        if wall > budget:
            write(f"over the {budget:.0f} s budget for this CPU kind: find the part that grew")
        out = self.config.getoption("suite_times_json")
        if out:
            record = {
                "cpu": describe_cpu(),
                "cpu_kind": kind,
                "workers": workers,
                "wall_s": round(wall, 1),
                "parts": {p: round(self.seconds[p], 1) for p in units + notebooks},
            }
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(json.dumps(record, indent=1) + "\n")


def last_times(config) -> dict[str, float]:
    """Seconds per part from the last run's JSON, else from the reference run's (empty if neither)."""
    for path in (config.getoption("suite_times_json"), REFERENCE):
        if path and Path(path).is_file():
            return json.loads(Path(path).read_text())["parts"]
    return {}


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: unused without it
def pytest_xdist_make_scheduler(config, log):
    """xdist's scope scheduling, with the longest parts handed out first."""
    if config.getoption("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    times = last_times(config)

    class LongestFirst(LoadScopeScheduling):
        def _assign_work_unit(self, node):
            # a part unknown to the last run (a new file) counts as long: it goes early
            longest = max(self.workqueue, key=lambda scope: times.get(_part(scope), 1e9))
            self.workqueue.move_to_end(longest, last=False)
            super()._assign_work_unit(node)

    return LongestFirst(config, log)


def pytest_addoption(parser):
    parser.addoption("--suite-times-json", default=None, help="also write the times per part here")


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # the controller sees every worker's reports
        config.pluginmanager.register(SuiteTimes(config), "suite_times_reporter")


if __name__ == "__main__":
    print(describe_cpu())
