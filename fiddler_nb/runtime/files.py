"""JSON files the package writes and reads back (profiles, plans, benchmark results).

One place for what every file the package writes or reads needs: on save, parent folders
created and the bytes written atomically (a temporary file beside the target, then a rename, so a
failed write -- disk full, no permission -- raises one `FileWriteError` line and leaves an older
file intact); on load, a one-line error that names the file and how to make a good one.
"""

from __future__ import annotations

import json
import os
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import FileFormatError, FileWriteError, MissingFileError, one_line
from .validate import check_path


@contextmanager
def atomic_target(path: str | Path, what: str = "file") -> Iterator[Path]:
    """The path to write instead of `path`; renamed onto `path` when the block ends well.

    Any OSError (here or inside the block) becomes one FileWriteError and removes the temporary
    file, so an older file at `path` is untouched. A target that exists and is not a regular file
    (a device such as /dev/null or /dev/full, a pipe) is written in place: renaming over it would
    replace the device.
    """
    path = Path(path).expanduser()
    mode = path.stat().st_mode if path.exists() else 0
    special = stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode)
    tmp = path if special else path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if not special:
            path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        if not special:
            os.replace(tmp, path)
    except OSError as err:
        if not special:
            tmp.unlink(missing_ok=True)
        raise FileWriteError(f"could not write {what} {path} ({err.strerror or one_line(err)}); "
                             "check the folder exists, is writable and has free space") from None


def write_atomic(path: str | Path, data: str | bytes, what: str = "file") -> Path:
    """Write text or bytes to `path` atomically (see `atomic_target`); returns the path."""
    with atomic_target(path, what) as tmp:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
    return Path(path).expanduser()


def write_with(path: str | Path, writer: Callable[[str], Any], what: str = "file") -> Path:
    """Let a library's `writer(path)` (e.g. safetensors' save_file) write atomically; its own
    I/O error types (safetensors raises SafetensorError) count as OSErrors."""
    with atomic_target(path, what) as tmp:
        try:
            writer(str(tmp))
        except OSError:
            raise
        except Exception as err:  # noqa: BLE001 -- a library's I/O error, re-raised as one line
            raise OSError(one_line(err)) from None
    return Path(path).expanduser()


def write_json(path: str | Path, data: Any, what: str = "JSON file") -> Path:
    """Write `data` as indented JSON, atomically, creating parent folders; returns the path."""
    return write_atomic(path, json.dumps(data, indent=1), what)


def read_json(path: str | Path, what: str, fix: str) -> Any:
    """The parsed JSON of `path`; MissingFileError / FileFormatError saying `what` it should
    have been and `fix` (how to make one)."""
    path = check_path(f"{what} path", path)
    if not path.is_file():
        raise MissingFileError(f"{what} {path} does not exist; {fix}")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FileFormatError(f"{what} {path} is not readable JSON ({one_line(err)}); {fix}") from None
