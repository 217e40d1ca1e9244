"""mtdefect.fileio: the one atomic writer and the one file sha256 every output goes through."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from mtdefect import fileio
from mtdefect.fileio import (
    dumps_strict,
    sha256_file,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)


def test_json_is_written_as_json_dumps_writes_it(tmp_path: Path) -> None:
    data = {"b": 1.5, "a": [1, 2.25e-7], "name": "Blowhole – ä", "none": None}
    path = write_json_atomic(tmp_path / "new" / "dir" / "out.json", data, indent=2, sort_keys=True)
    assert path == tmp_path / "new" / "dir" / "out.json"
    assert path.read_text(encoding="utf-8") == json.dumps(data, indent=2, sort_keys=True)
    assert list(path.parent.iterdir()) == [path], "no temporary file is left beside the output"


def strict_loads(text: str):
    """json.loads that refuses NaN / Infinity / -Infinity, as jq and browsers do."""

    def refuse(token: str):
        raise ValueError(f"not strict JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_numbers_are_written_as_null(tmp_path: Path) -> None:
    nan, inf = float("nan"), float("inf")
    data = {
        "per_class": {"MT_Fray": {"precision": nan, "recall": 0.0}},
        "rates": (inf, -inf, 0.5),
        "numpy": [np.float32("nan"), np.float64(0.25), np.float32(0.5), np.int64(3)],
    }
    path = write_json_atomic(tmp_path / "metrics.json", data, default=int)
    assert strict_loads(path.read_text()) == {
        "per_class": {"MT_Fray": {"precision": None, "recall": 0.0}},
        "rates": [None, None, 0.5],
        "numpy": [None, 0.25, 0.5, 3],
    }
    with pytest.raises(ValueError, match="NaN"):  # the strict reader itself rejects what json writes
        strict_loads(json.dumps({"precision": nan}))


def test_a_non_finite_number_that_escapes_the_conversion_raises_instead_of_writing_nan() -> None:
    # Decimal is no numbers.Real, so it reaches json.dumps, whose default= turns it into a float NaN
    assert dumps_strict({"x": Decimal("1.5")}, default=float) == '{"x": 1.5}'
    with pytest.raises(ValueError, match="not JSON compliant"):
        dumps_strict({"x": Decimal("NaN")}, default=float)


def test_text_is_written_verbatim_and_gets_an_ordinary_mode(tmp_path: Path) -> None:
    path = write_text_atomic(tmp_path / "m.csv", "a,b\r\n1,2\r\n")
    assert path.read_bytes() == b"a,b\r\n1,2\r\n", "line ends are not translated"
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, "not the private mode mkstemp gives"


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"dice": 0.5})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(fileio.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_json_atomic(path, {"dice": 0.9})
    assert json.loads(path.read_text()) == {"dice": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_unserialisable_data_leaves_the_target_untouched(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    write_bytes_atomic(path, b"old")
    with pytest.raises(TypeError):
        write_json_atomic(path, {"x": object()})
    assert path.read_bytes() == b"old"


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, (1 << 20) + 7, 3 << 20])
def test_sha256_file_agrees_with_hashlib_across_chunk_boundaries(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sha256_file(path, chunk=7) == hashlib.sha256(data).hexdigest()
