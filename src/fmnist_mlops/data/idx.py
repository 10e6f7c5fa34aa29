"""The raw Fashion-MNIST IDX files: find them (system folder, Keras cache, download), verify, read.

Integrity is checked on the *decompressed* bytes: Debian recompressed the ``.gz`` files, so
their compressed bytes differ from Zalando's while the content is identical.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fmnist_mlops.config.schema import IMAGE_SHAPE, NUM_CLASSES, TEST_IMAGES, TRAIN_IMAGES, DataCfg
from fmnist_mlops.runtime.errors import DataError
from fmnist_mlops.runtime.paths import resolve

log = logging.getLogger(__name__)

IMAGE_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions


LABEL_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension


@dataclass(frozen=True)
class IdxSpec:
    """What one IDX file must contain."""

    key: str
    filename: str
    sha256: str | None
    magic: int
    count: int


SPECS: tuple[IdxSpec, ...] = (
    IdxSpec(
        "train-images",
        "train-images-idx3-ubyte.gz",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        IMAGE_MAGIC,
        TRAIN_IMAGES,
    ),
    IdxSpec(
        "train-labels",
        "train-labels-idx1-ubyte.gz",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        LABEL_MAGIC,
        TRAIN_IMAGES,
    ),
    IdxSpec(
        "test-images",
        "t10k-images-idx3-ubyte.gz",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        IMAGE_MAGIC,
        TEST_IMAGES,
    ),
    IdxSpec(
        "test-labels",
        "t10k-labels-idx1-ubyte.gz",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        LABEL_MAGIC,
        TEST_IMAGES,
    ),
)


def _has_all(folder: Path, specs: tuple[IdxSpec, ...]) -> bool:
    return all((folder / s.filename).is_file() for s in specs)


def _download(base_url: str, dest: Path, specs: tuple[IdxSpec, ...], timeout: float) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        target = dest / spec.filename
        if target.is_file():
            continue
        url = base_url.rstrip("/") + "/" + spec.filename
        log.info("prepare: downloading %s", url)
        fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{spec.filename}.")
        try:
            with (
                os.fdopen(fd, "wb") as out,
                urllib.request.urlopen(url, timeout=timeout) as resp,
                tqdm(
                    total=int(resp.headers.get("Content-Length") or 0) or None,
                    unit="B",
                    unit_scale=True,
                    desc=f"prepare: {spec.filename}",
                    disable=None,
                ) as bar,
            ):
                for chunk in iter(lambda: resp.read(1 << 16), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def locate(data_cfg: DataCfg, specs: tuple[IdxSpec, ...] = SPECS) -> tuple[str, dict[str, Path]]:
    """Find the four IDX ``.gz`` files.

    ``data.source_dir``, when set, is the only place looked at. Otherwise, in order:
    ``data.system_dir`` (Debian ``dataset-fashion-mnist``), ``data.keras_cache_dir``, then a
    download from ``data.base_url`` into the Keras cache; the source used is logged.

    Returns:
        A label of where they came from and a mapping of spec key to file path.

    Raises:
        DataError: None of the four options provided the files (one line naming all four).
    """
    if data_cfg.source_dir is not None:
        # Named explicitly: used as it is or refused, never replaced by a fallback.
        folder = resolve(data_cfg.source_dir)
        missing = [s.filename for s in specs if not (folder / s.filename).is_file()]
        if missing:
            raise DataError(
                f"data.source_dir={data_cfg.source_dir!r} ({folder}) lacks {', '.join(missing)}: "
                "expected a folder holding the four Fashion-MNIST *-ubyte.gz files, or "
                "data.source_dir=null to search the system folder, the Keras cache and the web"
            )
        return f"data.source_dir ({folder})", {s.key: folder / s.filename for s in specs}
    candidates: list[tuple[str, Path]] = []
    candidates.append(("Debian package dataset-fashion-mnist", resolve(data_cfg.system_dir)))
    candidates.append(("Keras cache", resolve(data_cfg.keras_cache_dir)))
    for label, folder in candidates:
        if _has_all(folder, specs):
            return f"{label} ({folder})", {s.key: folder / s.filename for s in specs}

    cache = resolve(data_cfg.keras_cache_dir)
    try:
        _download(data_cfg.base_url, cache, specs, data_cfg.download_timeout_s)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        tried = ", ".join(f"{label} {folder}" for label, folder in candidates)
        raise DataError(
            f"Fashion-MNIST IDX files not found; tried {tried}, and download from "
            f"{data_cfg.base_url} failed ({reason}). Fix one: set data.source_dir=DIR holding "
            f"the four *-ubyte.gz files, run `apt-get install dataset-fashion-mnist`, put them "
            f"in {cache}, or allow network access to {data_cfg.base_url}"
        ) from None
    return f"download ({data_cfg.base_url})", {s.key: cache / s.filename for s in specs}


def read_idx(path: Path, spec: IdxSpec) -> tuple[np.ndarray, str]:
    """Decompress, verify and parse one IDX ``.gz`` file.

    Checks, in order: gzip integrity (truncation), magic number, record count, payload size,
    SHA-256 of the decompressed bytes (if ``spec.sha256``), and label range.

    Returns:
        The array (uint8; images (N, 28, 28), labels (N,)) and the decompressed SHA-256.

    Raises:
        DataError: One line naming the file and what is wrong.
    """
    try:
        packed = bytearray()
        # A bar on a terminal only (disable=None): DVC's and CI's logs stay one line per event.
        with (
            path.open("rb") as fh,
            tqdm(
                total=path.stat().st_size,
                unit="B",
                unit_scale=True,
                desc=f"prepare: {path.name}",
                disable=None,
                leave=False,
            ) as bar,
        ):
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                packed += chunk
                bar.update(len(chunk))
        raw = gzip.decompress(packed)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip file ({exc})") from None
    digest = hashlib.sha256(raw).hexdigest()
    if len(raw) < 8:
        raise DataError(f"{path}: {len(raw)} bytes is too short for an IDX header")
    magic = int.from_bytes(raw[0:4], "big")
    count = int.from_bytes(raw[4:8], "big")
    if magic != spec.magic:
        raise DataError(f"{path}: IDX magic number {magic}, expected {spec.magic} for {spec.key}")
    if count != spec.count:
        raise DataError(f"{path}: {count} records in header, expected {spec.count}")
    if spec.magic == IMAGE_MAGIC:
        rows = int.from_bytes(raw[8:12], "big")
        cols = int.from_bytes(raw[12:16], "big")
        if (rows, cols) != IMAGE_SHAPE:
            raise DataError(f"{path}: images are {rows}x{cols}, expected 28x28")
        offset, shape = 16, (count, *IMAGE_SHAPE)
    else:
        offset, shape = 8, (count,)
    expected_len = offset + int(np.prod(shape))
    if len(raw) != expected_len:
        raise DataError(
            f"{path}: {len(raw)} decompressed bytes, expected {expected_len} for {count} records"
        )
    if spec.sha256 is not None and digest != spec.sha256:
        raise DataError(
            f"{path}: SHA-256 of decompressed content is {digest}, expected {spec.sha256}"
        )
    array = np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape).copy()
    if spec.magic == LABEL_MAGIC and array.size and int(array.max()) >= NUM_CLASSES:
        raise DataError(f"{path}: label {int(array.max())} outside 0-{NUM_CLASSES - 1}")
    return array, digest


def load_raw(
    files: dict[str, Path], specs: tuple[IdxSpec, ...] = SPECS
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read and verify all four files; nothing is returned unless every file passes."""
    arrays, hashes = {}, {}
    for spec in specs:
        arrays[spec.key], hashes[spec.key] = read_idx(files[spec.key], spec)
    return arrays, hashes
