"""Fetch, verify and safely unpack the Magnetic Tile dataset into a clean dataset folder.

Output layout (written atomically: a staging folder renamed into place at the end)::

    <out>/MT_<Class>/<stem>.jpg   the original JPEG bytes, untouched
    <out>/MT_<Class>/<stem>.png   the mask, binarised: 255 where the source mask is > 127, else 0
    <out>/dataset.json            counts, source and the archive's sha256 (written last)
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from mtdefect.fileio import sha256_file

MASK_THRESHOLD = 127  # mask pixel > 127 → defect; documents how soft edge values are binarised
PAIR_PATTERN = re.compile(r"(?:^|/)(MT_[A-Za-z]+)/Imgs/([^/]+)\.(jpg|png)$", re.IGNORECASE)
SUMMARY_FILE = "dataset.json"
MAX_MEMBER_BYTES = 64 * 1024 * 1024
MAX_TOTAL_BYTES = 4 * 1024 * 1024 * 1024
ENV_HINT = (
    "point MT_DATA_SOURCE at a local copy instead, e.g. "
    "MT_DATA_SOURCE=../shared/data/magnetic-tiles.zip (a .zip or an unpacked folder)"
)


class DataSourceError(RuntimeError):
    """A problem with the data source, explained in one line."""


@dataclass(frozen=True)
class Sample:
    class_name: str
    stem: str
    image: bytes
    mask: bytes


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def download(url: str, dest: Path, timeout: float = 30.0) -> Path:
    """Stream a URL to ``dest`` with a progress bar (bytes and percent)."""
    import requests
    from tqdm import tqdm

    try:
        with requests.get(url, stream=True, timeout=timeout) as response:
            response.raise_for_status()
            total = int(response.headers.get("content-length", 0)) or None
            with (
                open(dest, "wb") as out,
                tqdm(total=total, unit="B", unit_scale=True, desc="download", file=sys.stderr) as bar,
            ):
                for block in response.iter_content(chunk_size=1 << 20):
                    out.write(block)
                    bar.update(len(block))
    except requests.RequestException as exc:
        reason = type(exc).__name__
        raise DataSourceError(f"cannot download {url} ({reason}); {ENV_HINT}") from None
    return dest


def check_member_name(name: str) -> None:
    """Refuse absolute paths, drive letters and parent-directory components (zip-slip)."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or re.match(r"^[A-Za-z]:", name) or ".." in posix.parts:
        raise DataSourceError(f"archive member {name!r} escapes the target folder: refusing the archive")


def _pairs(found: dict[tuple[str, str], dict[str, bytes | Path]]) -> Iterator[tuple[str, str, dict]]:
    for (class_name, stem), parts in sorted(found.items()):
        if "jpg" not in parts:
            raise DataSourceError(f"mask without image: {class_name}/{stem}.png")
        if "png" not in parts:
            raise DataSourceError(f"image without mask: {class_name}/{stem}.jpg")
        yield class_name, stem, parts


def iter_zip(path: Path) -> Iterator[Sample]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataSourceError(f"{path} is not a readable zip archive ({exc})") from None
    with archive:
        found: dict[tuple[str, str], dict] = {}
        total = 0
        for info in archive.infolist():
            check_member_name(info.filename)
            match = PAIR_PATTERN.search(info.filename)
            if info.is_dir() or not match:
                continue
            if info.file_size > MAX_MEMBER_BYTES:
                raise DataSourceError(
                    f"archive member {info.filename} is implausibly large ({info.file_size} B)"
                )
            total += info.file_size
            if total > MAX_TOTAL_BYTES:
                raise DataSourceError("archive unpacks to more than 4 GiB: refusing it")
            found.setdefault((match.group(1), match.group(2)), {})[match.group(3).lower()] = info
        if not found:
            raise DataSourceError(f"{path} holds no MT_<Class>/Imgs/<stem>.jpg + .png pairs")
        for class_name, stem, parts in _pairs(found):
            try:
                yield Sample(class_name, stem, archive.read(parts["jpg"]), archive.read(parts["png"]))
            except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
                raise DataSourceError(f"{path} is corrupt ({type(exc).__name__} in {stem})") from None


def iter_directory(path: Path) -> Iterator[Sample]:
    found: dict[tuple[str, str], dict] = {}
    for file in path.rglob("*"):
        match = PAIR_PATTERN.search(file.relative_to(path).as_posix())
        if match and file.is_file():
            found.setdefault((match.group(1), match.group(2)), {})[match.group(3).lower()] = file
    if not found:
        raise DataSourceError(f"{path} holds no MT_<Class>/Imgs/<stem>.jpg + .png pairs")
    for class_name, stem, parts in _pairs(found):
        yield Sample(class_name, stem, parts["jpg"].read_bytes(), parts["png"].read_bytes())


def binarize_mask(data: bytes, expected_size: tuple[int, int], name: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as mask_img:
            mask = np.asarray(mask_img.convert("L"))
    except Exception as exc:
        raise DataSourceError(f"mask {name} is unreadable ({type(exc).__name__})") from None
    if mask.shape != expected_size:
        raise DataSourceError(f"mask {name} is {mask.shape[::-1]} but its image is {expected_size[::-1]}")
    return np.where(mask > MASK_THRESHOLD, 255, 0).astype(np.uint8)


def image_size(data: bytes, name: str) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.size[1], img.size[0]
    except Exception as exc:
        raise DataSourceError(f"image {name} is unreadable ({type(exc).__name__})") from None


def write_dataset(samples: Iterator[Sample], out_dir: Path, summary: dict) -> dict:
    """Write samples into a staging folder next to ``out_dir`` and swap it in only when complete."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.parent.glob(f".{out_dir.name}.staging-*"):  # left by a killed earlier run
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))
    try:
        counts: dict[str, int] = {}
        for sample in samples:
            name = f"{sample.class_name}/{sample.stem}"
            size = image_size(sample.image, name + ".jpg")
            mask = binarize_mask(sample.mask, size, name + ".png")
            folder = staging / sample.class_name
            folder.mkdir(exist_ok=True)
            (folder / f"{sample.stem}.jpg").write_bytes(sample.image)
            Image.fromarray(mask).save(folder / f"{sample.stem}.png", optimize=False)
            counts[sample.class_name] = counts.get(sample.class_name, 0) + 1
        summary = {
            **summary,
            "classes": dict(sorted(counts.items())),
            "images": sum(counts.values()),
            "mask_threshold": MASK_THRESHOLD,
        }
        (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True))
        if out_dir.exists():
            trash = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            out_dir.rename(trash)
            try:
                staging.rename(out_dir)
            except BaseException:
                trash.rename(out_dir)  # put the previous complete dataset back
                raise
            shutil.rmtree(trash, ignore_errors=True)
        else:
            staging.rename(out_dir)
        return summary
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def load_dataset(source: str, out_dir: str | Path, sha256: str | None = None) -> dict:
    """Resolve ``source`` (URL, .zip or folder), verify, unpack and binarise into ``out_dir``."""
    out_dir = Path(out_dir)
    source = str(source).strip()
    if not source:
        raise DataSourceError(f"no data source given; {ENV_HINT}")
    with tempfile.TemporaryDirectory(
        prefix=".download-", dir=out_dir.parent if out_dir.parent.exists() else None
    ) as tmp:
        if is_url(source):
            path = download(source, Path(tmp) / "archive.zip")
        else:
            path = Path(source).expanduser()
            if not path.exists():
                raise DataSourceError(f"data source {source} does not exist; {ENV_HINT}")
        summary: dict = {"source": source}
        if path.is_dir():
            if sha256:
                print(f"note: sha256 is checked for archives only; {path} is a folder", file=sys.stderr)
            samples = iter_directory(path)
        else:
            digest = sha256_file(path)
            if sha256 and digest.lower() != sha256.lower():
                raise DataSourceError(f"sha256 mismatch for {source}: expected {sha256}, got {digest}")
            summary["archive_sha256"] = digest
            samples = iter_zip(path)
        return write_dataset(samples, out_dir, summary)


def read_summary(dataset_dir: str | Path) -> dict:
    """The dataset's summary; its absence means the folder is not a complete dataset."""
    path = Path(dataset_dir) / SUMMARY_FILE
    if not path.exists():
        raise DataSourceError(
            f"{dataset_dir} is not a complete dataset (no {SUMMARY_FILE}); rerun the data stage"
        )
    return json.loads(path.read_text())
