"""JSON files the package writes and reads back (profiles, plans, benchmark results).

One place for the two things every such file needs: parent folders created on save, and on load
a one-line error that names the file and how to make a good one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import FileFormatError, MissingFileError, one_line
from .validate import check_path


def write_json(path: str | Path, data: Any) -> Path:
    """Write `data` as indented JSON, creating parent folders; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


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
