"""Data: locating, verifying, splitting and atomically writing the real IDX files."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import re
import shlex
import shutil
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, SYSTEM_DATA, free_port, require_real_data, venv_env
from omegaconf import OmegaConf, open_dict

from fmnist_mlops.config.compose import compose
from fmnist_mlops.data.idx import IMAGE_MAGIC, LABEL_MAGIC, SPECS, IdxSpec, locate, read_idx
from fmnist_mlops.data.preparation import prepare
from fmnist_mlops.data.splits import load_prepared
from fmnist_mlops.runtime.errors import DataError


def idx_bytes(magic: int, count: int, payload: bytes, dims=(28, 28)) -> bytes:
    header = magic.to_bytes(4, "big") + count.to_bytes(4, "big")
    if magic == IMAGE_MAGIC:
        header += b"".join(d.to_bytes(4, "big") for d in dims)
    return header + payload


def write_gz(path: Path, raw: bytes) -> Path:
    path.write_bytes(gzip.compress(raw))
    return path


IMG_SPEC = IdxSpec("train-images", "imgs.gz", None, IMAGE_MAGIC, 3)
LBL_SPEC = IdxSpec("train-labels", "lbls.gz", None, LABEL_MAGIC, 3)


def test_reads_images_and_labels_and_hashes_decompressed_content(tmp_path):
    pixels = np.arange(3 * 28 * 28, dtype=np.uint32).astype(np.uint8)
    raw = idx_bytes(IMAGE_MAGIC, 3, pixels.tobytes())
    images, digest = read_idx(write_gz(tmp_path / "imgs.gz", raw), IMG_SPEC)
    assert images.shape == (3, 28, 28) and images.dtype == np.uint8
    assert np.array_equal(images.ravel(), pixels)
    assert digest == hashlib.sha256(raw).hexdigest()
    labels, _ = read_idx(
        write_gz(tmp_path / "l.gz", idx_bytes(LABEL_MAGIC, 3, bytes([0, 9, 4]))), LBL_SPEC
    )
    assert labels.tolist() == [0, 9, 4]


def test_same_content_recompressed_gives_same_hash(tmp_path):
    raw = idx_bytes(LABEL_MAGIC, 3, bytes([1, 2, 3]))
    a = tmp_path / "a.gz"
    a.write_bytes(gzip.compress(raw, compresslevel=1))
    b = tmp_path / "b.gz"
    b.write_bytes(gzip.compress(raw, compresslevel=9, mtime=12345))
    assert a.read_bytes() != b.read_bytes()
    assert read_idx(a, LBL_SPEC)[1] == read_idx(b, LBL_SPEC)[1]


@pytest.mark.parametrize(
    ("raw", "spec", "message"),
    [
        (idx_bytes(LABEL_MAGIC, 3, bytes([1, 2, 3])), IMG_SPEC, "magic number 2049, expected 2051"),
        (idx_bytes(IMAGE_MAGIC, 5, bytes(5 * 784)), IMG_SPEC, "5 records in header, expected 3"),
        (idx_bytes(IMAGE_MAGIC, 3, bytes(2 * 784)), IMG_SPEC, "decompressed bytes, expected"),
        (
            idx_bytes(IMAGE_MAGIC, 3, bytes(3 * 32 * 32), dims=(32, 32)),
            IMG_SPEC,
            "32x32, expected 28x28",
        ),
        (idx_bytes(LABEL_MAGIC, 3, bytes([1, 10, 3])), LBL_SPEC, "label 10 outside 0-9"),
        (b"\x00\x00", LBL_SPEC, "too short"),
    ],
)
def test_bad_content_is_rejected_naming_the_file(tmp_path, raw, spec, message):
    path = write_gz(tmp_path / "bad-file.gz", raw)
    with pytest.raises(DataError, match=message) as err:
        read_idx(path, spec)
    assert "bad-file.gz" in str(err.value) and "\n" not in str(err.value)


def test_checksum_mismatch_names_both_hashes(tmp_path):
    raw = idx_bytes(LABEL_MAGIC, 3, bytes([1, 2, 3]))
    spec = IdxSpec("train-labels", "x", "0" * 64, LABEL_MAGIC, 3)
    with pytest.raises(
        DataError, match=f"is {hashlib.sha256(raw).hexdigest()}, expected {'0' * 64}"
    ):
        read_idx(write_gz(tmp_path / "l.gz", raw), spec)


def test_truncated_and_non_gzip_files_are_rejected(tmp_path):
    good = gzip.compress(idx_bytes(IMAGE_MAGIC, 3, bytes(3 * 784)))
    cut = tmp_path / "cut.gz"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"cut.gz: corrupt or truncated gzip"):
        read_idx(cut, IMG_SPEC)
    plain = tmp_path / "plain.gz"
    plain.write_bytes(b"not gzip at all" * 10)
    with pytest.raises(DataError, match=r"plain.gz: corrupt or truncated gzip"):
        read_idx(plain, IMG_SPEC)


# ----------------------------------------------------------------------------- locating


def data_cfg(tmp_path, **kw):
    base = {
        "source_dir": None,
        "system_dir": str(tmp_path / "system"),
        "keras_cache_dir": str(tmp_path / "keras"),
        "base_url": "http://127.0.0.1:9/",
        "download_timeout_s": 5,
    }
    base.update(kw)
    return OmegaConf.create(base)


def fill(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for spec in SPECS:
        (folder / spec.filename).write_bytes(b"x")
    return folder


def test_locate_prefers_source_dir_then_system_then_keras_cache(tmp_path):
    fill(tmp_path / "system")
    fill(tmp_path / "keras")
    fill(tmp_path / "mine")
    label, files = locate(data_cfg(tmp_path, source_dir=str(tmp_path / "mine")))
    assert label.startswith("data.source_dir") and files["train-images"].parent == tmp_path / "mine"
    label, files = locate(data_cfg(tmp_path))
    assert label.startswith("Debian package") and files["test-labels"].parent == tmp_path / "system"
    shutil.rmtree(tmp_path / "system")
    label, files = locate(data_cfg(tmp_path))
    assert label.startswith("Keras cache")


@pytest.mark.parametrize("state", ["empty", "missing", "three of four"])
def test_an_explicit_source_dir_is_used_or_refused_never_replaced(tmp_path, state):
    fill(tmp_path / "system")  # a fallback that would work: it must not be used
    mine = tmp_path / "mine"
    if state == "empty":
        mine.mkdir()
    elif state == "three of four":
        fill(mine)
        (mine / SPECS[0].filename).unlink()
    with pytest.raises(DataError) as err:
        locate(data_cfg(tmp_path, source_dir=str(mine)))
    msg = str(err.value)
    assert msg.startswith(f"data.source_dir='{mine}'") and "\n" not in msg
    assert SPECS[0].filename in msg


def test_offline_error_names_all_four_options(tmp_path):
    port = free_port()  # nothing listens there: connection refused, like being offline
    with pytest.raises(DataError) as err:
        locate(data_cfg(tmp_path, base_url=f"http://127.0.0.1:{port}/"))
    msg = str(err.value)
    assert "\n" not in msg
    for needle in (
        "data.source_dir",
        "apt-get install dataset-fashion-mnist",
        str(tmp_path / "keras"),
        f"127.0.0.1:{port}",
    ):
        assert needle in msg
    assert not list((tmp_path / "keras").glob("*.gz")), "no partial download may be left"


def test_download_fallback_fetches_into_keras_cache(tmp_path):
    served = fill(tmp_path / "served")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        label, files = locate(data_cfg(tmp_path, base_url=url))
    finally:
        server.shutdown()
    assert label.startswith("download")
    assert all(p.parent == tmp_path / "keras" and p.read_bytes() == b"x" for p in files.values())


# ----------------------------------------------------------------------------- real data


@pytest.fixture(scope="session")
def real_prepared(tmp_path_factory):
    require_real_data()
    out = tmp_path_factory.mktemp("real") / "prepared"
    cfg = compose([], config_dir=ROOT / "conf")
    with open_dict(cfg):
        cfg.paths.prepared = str(out)
    meta = prepare(cfg)
    return out, meta, cfg


@pytest.mark.xdist_group("real-split")  # prepared once, by the module fixture
def test_real_data_verifies_and_splits_stratified(real_prepared):
    out, meta, _ = real_prepared
    assert meta["sha256"] == {s.key: s.sha256 for s in SPECS}
    assert meta["counts"] == {"train": 48000, "val": 12000, "test": 10000}
    assert meta["class_counts"]["val"] == [1200] * 10
    splits = load_prepared(out)
    assert splits.x_train.dtype == np.uint8 and splits.x_train.shape == (48000, 28, 28)
    # The test set is the official one, untouched and in its original order.
    test_images, _ = read_idx(SYSTEM_DATA / "t10k-images-idx3-ubyte.gz", SPECS[2])
    assert np.array_equal(splits.x_test, test_images)


@pytest.mark.xdist_group("real-split")
def test_corrupt_source_fails_before_anything_is_written(real_prepared, tmp_path):
    out, _, cfg = real_prepared
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    broken = tmp_path / "broken"
    shutil.copytree(SYSTEM_DATA, broken)
    target = broken / "train-labels-idx1-ubyte.gz"
    target.write_bytes(target.read_bytes()[:-100])  # truncated download
    with open_dict(cfg):
        cfg.data.source_dir = str(broken)
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: corrupt or truncated"):
        prepare(cfg)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in out.parent.iterdir()] == ["prepared"], "no temp folder left behind"


def _prepare_cli(tmp_path, via_terminal: bool) -> str:
    out = tmp_path / ("tty" if via_terminal else "pipe")
    cmd = [sys.executable, str(ROOT / "src" / "prepare.py"), "+experiment=smoke"]
    cmd.append(f"paths.prepared={out}")
    if via_terminal:  # a pseudo-terminal with a real size, as a user's shell has
        cmd = ["script", "-qec", "stty cols 120 rows 40; " + shlex.join(cmd), "/dev/null"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=venv_env(), timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout + result.stderr


def test_logs_are_one_line_per_event_and_bars_only_on_a_terminal(tmp_path):
    require_real_data()
    logged = _prepare_cli(tmp_path, via_terminal=False)
    lines = [line for line in logged.splitlines() if not line.startswith("{")]
    assert lines and all(re.match(r"\d\d:\d\d:\d\d (INFO|WARNING) prepare: ", x) for x in lines), (
        lines
    )
    assert "\r" not in logged and "%|" not in logged
    shown = _prepare_cli(tmp_path, via_terminal=True)
    assert "prepare: train-images-idx3-ubyte.gz" in shown and "%|" in shown
