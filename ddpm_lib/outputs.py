"""Files the library writes: checked before the work, written whole or not at all.

Every output (checkpoints, sample grids and batches, JSON figures, GIFs) goes through
:func:`write_atomic`: the bytes go to a temporary file beside the target, are flushed to the disk
(``fsync``) and then renamed over it (``os.replace``, atomic on POSIX and Windows). A full disk, a
file-size limit or an interrupt leaves the previous file as it was. :func:`check_output` refuses an
output location before any work: an empty name, a folder, a path under a file, a folder that cannot
be written, or a path that is also one of the command's inputs.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO


class OutputError(OSError):
    """An output that could not be written; the message names the file and says that it is unchanged."""


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(f)`` on a temporary file in ``path``'s folder, fsync it, then rename it over ``path``.

    Creates missing parent folders. On failure the temporary file is removed, ``path`` keeps its
    previous content (or stays absent), and a write error (a full disk, a size limit) is raised as
    :class:`OutputError` naming the file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, (OSError, RuntimeError)) and not isinstance(exc, OutputError):
            kept = "is unchanged" if path.exists() else "was not written"
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise OutputError(f"cannot write {path} ({reason}); {path.name} {kept}") from exc
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """``text`` (UTF-8) to ``path`` through :func:`write_atomic`."""
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def file_size_limit_as_error() -> None:
    """Make a file-size limit (``ulimit -f``) fail a write with an error instead of killing the process.

    The default action of SIGXFSZ ends the process mid-write and leaves a temporary file behind;
    ignored, the write raises ``EFBIG``, which :func:`write_atomic` reports. For command lines.
    """
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def check_output(
    path: str | os.PathLike | None,
    what: str,
    suffixes: tuple[str, ...] = (),
    inputs: Iterable[tuple[str, str | os.PathLike | None]] = (),
) -> Path:
    """``path`` as a ``Path`` when it can be written, checked before any work; ``ValueError`` otherwise.

    ``what`` names the option in messages (``"--out"``); ``suffixes`` are the allowed endings;
    ``inputs`` pairs ``(name, path)`` of the other files of the command (``("the input --samples",
    path)``): an output that is one of them (the same file under another name too) is refused. Missing parent folders are allowed (they are
    created when the file is written) as long as the nearest existing one is a writable folder.
    """
    if path is None or str(path).strip() in ("", "."):
        hint = f" ending in {' or '.join(suffixes)}" if suffixes else ""
        raise ValueError(f"{what} is empty; give a file name{hint}")
    path = Path(path).expanduser()
    if suffixes and path.suffix.lower() not in suffixes:
        raise ValueError(f"{what} must end in {' or '.join(suffixes)}, got {path}")
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; give a file name inside it")
    for name, given in inputs:
        if given is not None and str(given) != "" and _same_file(path, Path(given)):
            raise ValueError(
                f"{what} {path} is also {name}: writing it would destroy that file; "
                "choose another file name"
            )
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"cannot write {what} {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"cannot write {what} {path}: permission denied")
    return path
