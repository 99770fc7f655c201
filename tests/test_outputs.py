"""Outputs are written whole or not at all, checked before the work, and never replace an input.

A full disk is a file-size limit (``RLIMIT_FSIZE``) in a subprocess: each command must exit 2 with one
``error:`` line and leave the previous file byte-identical, with no temporary file beside it.
"""

import json
import math
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddpm_lib import devices
from ddpm_lib.checkpoints import append_log_row, truncate_log
from ddpm_lib.checks import env_flag
from ddpm_lib.outputs import OutputError, check_output, write_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 4096  # bytes: any sample grid or batch below is larger

# runs each command's main() in one process (one import of torch), reporting status and stderr
DRIVER = """
import contextlib, io, json, sys
from ddpm_lib import sample, toy_cars
results = []
for name, argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = {"sample": sample, "toy_cars": toy_cars}[name].main(argv)
    results.append([status, err.getvalue()])
print(json.dumps(results))
"""


def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


@pytest.mark.slow
def test_a_full_disk_keeps_the_previous_file(tmp_path):
    """``ulimit -f``: the PNG grid, the ``.npz`` batch and the toy-cars preview each fail cleanly."""
    old = {name: f"the previous {name}\n".encode() * 3 for name in ("s.png", "s.npz", "p.png")}
    for name, data in old.items():
        (tmp_path / name).write_bytes(data)
    sample = "--precision fp32 --device cpu --num-samples 16 --steps 1 --out".split()
    commands = [
        ["sample", [*sample, str(tmp_path / "s.png")]],
        ["sample", [*sample, str(tmp_path / "s.npz")]],
        ["toy_cars", ["--out", str(tmp_path / "p.png")]],
    ]
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(commands)],
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size,  # SIGXFSZ is not ignored here: the commands do it themselves
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for (status, err), (name, data) in zip(json.loads(result.stdout), old.items()):
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert status == 2 and "Traceback" not in err and len(errors) == 1, err
        assert f"cannot write {tmp_path / name} (File too large); {name} is unchanged" in errors[0]
        assert (tmp_path / name).read_bytes() == data, f"{name} was changed"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(old), "a temporary file was left"


def test_write_atomic_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "r.json"
    write_text_atomic(path, '{"fid": 1}')

    def half_then_full(f):
        f.write(b'{"fid"')
        raise OSError(28, "No space left on device")

    with pytest.raises(
        OutputError, match=r"cannot write .*r.json \(No space left on device\); r.json is unchanged"
    ):
        write_atomic(path, half_then_full)
    assert path.read_text() == '{"fid": 1}' and [p.name for p in tmp_path.iterdir()] == ["r.json"]
    with pytest.raises(OutputError, match=r"new.json was not written"):
        write_atomic(tmp_path / "new.json", half_then_full)
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_a_failed_log_append_keeps_every_earlier_row(tmp_path, monkeypatch):
    """A row cut off by a full disk is removed again: the next row does not join a partial line."""
    log = tmp_path / "loss.csv"
    for step in (1, 2):
        append_log_row(log, {"step": step, "loss": 0.5})
    before = log.read_bytes()
    real_write = os.write

    def partial(fd, data):
        real_write(fd, data[:3])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", partial)
    with pytest.raises(
        OutputError, match=r"cannot append to .*loss.csv .*its earlier rows are kept"
    ):
        append_log_row(log, {"step": 3, "loss": 0.5})
    monkeypatch.undo()
    assert log.read_bytes() == before
    append_log_row(log, {"step": 3, "loss": 0.25})
    assert [r["step"] for r in truncate_log(log, 10)] == [1.0, 2.0, 3.0]


def test_truncate_log_drops_a_partial_last_row(tmp_path):
    """A run killed mid-append leaves half a row; the resumed run drops it instead of crashing."""
    log = tmp_path / "loss.csv"
    log.write_text("step,loss\n1,0.5\n2,0.4\n3,0.")
    assert [r["step"] for r in truncate_log(log, 2)] == [1.0, 2.0]
    log.write_text("step,loss\n1,0.5\n2,0.4\n3")  # a row with too few fields
    assert [r["step"] for r in truncate_log(log, 5)] == [1.0, 2.0]
    log.write_text("step,loss\n1,0.5\nstep?,x\n")
    assert [r["step"] for r in truncate_log(log, 5)] == [1.0]


# ---------------------------------------------------------------------------------- output checks
def test_check_output_refuses_before_any_work(tmp_path):
    data = tmp_path / "samples.npz"
    data.write_bytes(b"samples")
    alias = tmp_path / "alias.npz"
    alias.symlink_to(data)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    inputs = [("the input --samples", data)]
    cases = [
        (data, r"--json .*samples.npz is also the input --samples: writing it would destroy"),
        (alias, r"--json .*alias.npz is also the input --samples"),
        (tmp_path / "." / "samples.npz", r"is also the input --samples"),
        (
            a_file / "r.json",
            r"cannot write --json .*a_file/r.json: .*a_file is a file, not a folder",
        ),
        (a_file / "deeper" / "r.json", r"a_file is a file, not a folder"),
        (tmp_path, r"--json .* is a folder; give a file name inside it"),
        ("", r"--json is empty; give a file name"),
    ]
    for path, match in cases:
        with pytest.raises(ValueError, match=match):
            check_output(path, "--json", (), inputs)
    with pytest.raises(ValueError, match=r"--out must end in .png or .npz, got .*r.json"):
        check_output(tmp_path / "r.json", "--out", (".png", ".npz"))
    assert (
        check_output(tmp_path / "new" / "r.json", "--json", (), inputs) == tmp_path / "new/r.json"
    )
    assert not (tmp_path / "new").exists(), "a check created a folder"
    assert data.read_bytes() == b"samples"


# ---------------------------------------------------------------------------------- the precision cache
BAD_CACHES = {
    "a list": "[1, 2]",
    "not JSON": "{speedup",
    "an entry that is a list": "{KEY: [2.0]}",
    "a string ratio": '{KEY: {"speedup": "2.0"}}',
    "Infinity": '{KEY: {"speedup": Infinity}}',
    "NaN": '{KEY: {"speedup": NaN}}',
    "a negative ratio": '{KEY: {"speedup": -2.0}}',
    "zero": '{KEY: {"speedup": 0}}',
    "true": '{KEY: {"speedup": true}}',
    "no speedup": '{KEY: {"measured_at": "today"}}',
}


@pytest.mark.parametrize("case", list(BAD_CACHES))
def test_a_bad_precision_cache_is_measured_again(case, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []

    def timer(dtype):  # bf16 twice as fast
        calls.append(dtype)
        return 1.0 if dtype == torch.float32 else 0.5

    first = devices.resolve_precision("auto", "cpu", timer=timer)
    assert first.source == "measured" and len(calls) == 2
    cache = devices.cache_path()
    (key,) = json.loads(cache.read_text())
    cache.write_text(BAD_CACHES[case].replace("KEY", json.dumps(key)))
    again = devices.resolve_precision("auto", "cpu", timer=timer)
    assert again.source == "measured" and len(calls) == 4 and math.isclose(again.speedup, 2.0)
    assert json.loads(cache.read_text())[key]["speedup"] == 2.0  # the entry is repaired
    assert devices.resolve_precision("auto", "cpu", timer=timer).source == "cached"


# ---------------------------------------------------------------------------------- yes/no variables
@pytest.mark.parametrize(
    "value, expected",
    [
        ("1", True),
        ("true", True),
        ("Yes", True),
        ("ON", True),
        (" on ", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
        ("", False),
        (None, False),
    ],
)
def test_env_flag_reads_the_usual_words(value, expected, monkeypatch):
    if value is None:
        monkeypatch.delenv("DDPM_FAST", raising=False)
    else:
        monkeypatch.setenv("DDPM_FAST", value)
    assert env_flag("DDPM_FAST") is expected


@pytest.mark.parametrize("value", ["2", "ture", "y", "fast", "-1"])
def test_env_flag_refuses_anything_else(value, monkeypatch):
    monkeypatch.setenv("DDPM_FAST", value)
    with pytest.raises(
        ValueError,
        match=rf"\$DDPM_FAST must be one of 1, true, yes, on or 0, false, no, off, got '{value}'",
    ):
        env_flag("DDPM_FAST")


def test_plotting_animation_is_checked_and_atomic(tmp_path):
    from ddpm_lib import plotting

    traj = {
        "timesteps": torch.arange(3, -1, -1),
        "x_t": torch.rand(4, 2, 3, 8, 8) * 2 - 1,
        "x0_pred": torch.rand(4, 2, 3, 8, 8) * 2 - 1,
    }
    gif = tmp_path / "a.gif"
    gif.write_bytes(b"old")
    for kwargs, match in [
        (dict(path=tmp_path / "a.png"), r"path must end in .gif"),
        (dict(path=gif, frames=0), r"frames must be >= 1, got 0"),
        (dict(path=gif, scale=0), r"scale must be >= 1, got 0"),
    ]:
        with pytest.raises(ValueError, match=match):
            plotting.save_denoising_animation(traj, **kwargs)
    assert gif.read_bytes() == b"old"
    assert plotting.save_denoising_animation(traj, gif, frames=2) == gif
    assert gif.read_bytes()[:6] == b"GIF89a"
