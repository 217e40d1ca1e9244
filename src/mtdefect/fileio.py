"""Files written whole or not at all, strict JSON, and the one sha256 of a file.

Every writer of a JSON/text output goes through ``write_bytes_atomic``: the bytes go to a temporary
file in the target's folder, are flushed to disk, and the file is renamed over the target, so a
reader (or a killed run) sees either the old file or the new one, never half of one.

    write_json_atomic("reports/metrics.json", metrics, indent=2)
    write_text_atomic("reports/report.md", markdown)
    sha256_file("data/split.csv")

JSON is written strict (RFC 8259): a value that is not a finite number (NaN, ±inf: a precision
with no positive prediction, a rate over an empty class) is written as ``null``, never as the
``NaN`` / ``Infinity`` that Python's ``json`` emits by default and that ``jq``, browsers and most
parsers reject. ``dumps_strict`` is that conversion for any writer that is not a file here
(benchmark results go through it too).
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import tempfile
from pathlib import Path
from typing import Any


def _current_umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask sets while it reads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates private (0600) files; outputs get the mode an ordinary open() would give them.
_FILE_MODE = 0o666 & ~_current_umask()


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary sibling file and a rename; parents are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """``text`` written verbatim (no newline translation: a CSV's ``\\r\\n`` stays as it is)."""
    return write_bytes_atomic(path, text.encode(encoding))


def finite_or_none(data: Any) -> Any:
    """``data`` with every non-finite number (NaN, ±inf; Python or numpy floats) replaced by ``None``
    and numpy floats made Python floats; dicts, lists and tuples are walked, anything else is kept."""
    if isinstance(data, dict):
        return {key: finite_or_none(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_or_none(value) for value in data]
    if isinstance(data, numbers.Real) and not isinstance(data, numbers.Integral):
        value = float(data)
        return value if math.isfinite(value) else None
    return data


def dumps_strict(data: Any, **json_kwargs: Any) -> str:
    """``json.dumps`` that writes strict JSON: non-finite numbers become ``null`` (see the module
    docstring) and anything else that strict JSON cannot hold raises (``allow_nan=False``)."""
    return json.dumps(finite_or_none(data), allow_nan=False, **json_kwargs)


def write_json_atomic(path: str | Path, data: Any, **json_kwargs: Any) -> Path:
    """``dumps_strict(data, **json_kwargs)`` written atomically: the bytes ``json.dump`` would write
    for finite data (no trailing newline is added, so a rewrite of an unchanged result is
    byte-identical)."""
    return write_text_atomic(path, dumps_strict(data, **json_kwargs))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks (archives of several GiB included)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
