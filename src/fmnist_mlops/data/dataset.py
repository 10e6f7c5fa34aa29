"""Find, verify and read the Fashion-MNIST IDX files; split them; write/read prepared arrays.

Integrity is checked on the *decompressed* bytes: Debian recompressed the ``.gz`` files, so
their compressed bytes differ from Zalando's while the content is identical.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from fmnist_mlops.config.schema import NUM_CLASSES, Config, DataCfg
from fmnist_mlops.runtime.errors import DataError
from fmnist_mlops.runtime.paths import resolve

log = logging.getLogger(__name__)

IMAGE_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
LABEL_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension

SPLITS = ("train", "val", "test")


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
        60000,
    ),
    IdxSpec(
        "train-labels",
        "train-labels-idx1-ubyte.gz",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        LABEL_MAGIC,
        60000,
    ),
    IdxSpec(
        "test-images",
        "t10k-images-idx3-ubyte.gz",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        IMAGE_MAGIC,
        10000,
    ),
    IdxSpec(
        "test-labels",
        "t10k-labels-idx1-ubyte.gz",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        LABEL_MAGIC,
        10000,
    ),
)


@dataclass
class Splits:
    """Prepared uint8 arrays: images (N, 28, 28) with raw 0-255 pixels, labels (N,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    meta: dict[str, Any]


# --------------------------------------------------------------------------- locating


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


# --------------------------------------------------------------------------- reading


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
        if (rows, cols) != (28, 28):
            raise DataError(f"{path}: images are {rows}x{cols}, expected 28x28")
        offset, shape = 16, (count, 28, 28)
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


# --------------------------------------------------------------------------- splitting


def _stratified_subset(x: np.ndarray, y: np.ndarray, n: int | None, seed: int):
    if n is None or n >= len(y):
        return x, y
    from sklearn.model_selection import train_test_split

    x_sub, _, y_sub, _ = train_test_split(x, y, train_size=n, stratify=y, random_state=seed)
    return x_sub, y_sub


def split(arrays: dict[str, np.ndarray], data_cfg: DataCfg) -> dict[str, tuple[np.ndarray, ...]]:
    """Stratified train/val split of the training set; optional stratified subsets.

    The test set is never split or shuffled: only subset when ``data.max_test`` is set.
    """
    from sklearn.model_selection import train_test_split

    seed = data_cfg.split_seed
    x_tr, x_val, y_tr, y_val = train_test_split(
        arrays["train-images"],
        arrays["train-labels"],
        test_size=data_cfg.val_split,
        stratify=arrays["train-labels"],
        random_state=seed,
    )
    out = {
        "train": _stratified_subset(x_tr, y_tr, data_cfg.max_train, seed),
        "val": _stratified_subset(x_val, y_val, data_cfg.max_val, seed),
        "test": _stratified_subset(
            arrays["test-images"], arrays["test-labels"], data_cfg.max_test, seed
        ),
    }
    return out


# --------------------------------------------------------------------------- prepared files


def write_prepared(out: Path, splits: dict[str, tuple[np.ndarray, ...]], meta: dict) -> None:
    """Write ``{train,val,test}.npz`` and ``meta.json`` atomically (temp folder, then rename).

    A failure anywhere leaves a previous ``out`` exactly as it was.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    tmp.chmod(0o755)  # mkdtemp makes it private; prepared data is not secret
    try:
        for name, (x, y) in splits.items():
            np.savez(tmp / f"{name}.npz", x=x.astype(np.uint8), y=y.astype(np.uint8))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_prepared(folder: Path) -> Splits:
    """Load what :func:`write_prepared` wrote.

    Raises:
        DataError: The folder or one of its files is missing.
    """
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise DataError(
            f"paths.prepared={folder} holds no prepared data: run `dvc repro prepare` "
            f"(or `python src/prepare.py`) first"
        )
    meta = json.loads(meta_path.read_text())
    arrays = {}
    for name in SPLITS:
        with np.load(folder / f"{name}.npz") as npz:
            arrays[name] = (npz["x"], npz["y"])
    return Splits(*arrays["train"], *arrays["val"], *arrays["test"], meta=meta)


def split_settings(data_cfg: DataCfg) -> dict[str, Any]:
    """What ``meta.json`` records of the split, and what a stage checks it against."""
    return {
        "val_split": data_cfg.val_split,
        "split_seed": data_cfg.split_seed,
        "max": {"train": data_cfg.max_train, "val": data_cfg.max_val, "test": data_cfg.max_test},
    }


def check_split(data_cfg: DataCfg, meta: dict[str, Any], folder: Path) -> None:
    """Refuse prepared data that was split with other settings than this config asks for."""
    wanted = split_settings(data_cfg)
    found = {k: meta.get(k) for k in wanted}
    if found != wanted:
        raise DataError(
            f"prepared data in {folder} was made with {found}, this config asks for {wanted}: "
            "prepare that split into a folder of its own (`python src/prepare.py <the same "
            "data.* overrides> paths.prepared=<folder>`) and name it here too; `dvc repro` "
            "remakes data/prepared from params.yaml"
        )


def stage_split(config: Config) -> tuple[Path, Splits]:
    """The prepared split every stage after ``prepare`` reads, checked against ``config``.

    ``paths.prepared``, loaded, and refused in one line if it was made with other ``data.*``
    settings than ``config``'s.

    Returns:
        The folder and the splits.
    """
    prepared = resolve(config.paths.prepared)
    splits = load_prepared(prepared)
    check_split(config.data, splits.meta, prepared)
    return prepared, splits
