"""Installs on the supported Pythons and machines: the universal lock, the Python picker, the
model's own environment, and the hardware-dependent precision."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import subprocess
import sys
import threading
import tomllib
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest
from helpers import ROOT, load_script
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from fmnist_mlops.train import platforms

targets = load_script("tools/targets.py")

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_requires_python_admits_exactly_the_supported_versions():
    spec = SpecifierSet(PYPROJECT["project"]["requires-python"])
    for version in ("3.11.0", "3.12.1", "3.13.0", "3.13.9"):
        assert version in spec
    for version in ("3.10.13", "3.14.0", "3.15.0"):
        assert version not in spec
    assert targets.PYTHONS == ("3.11", "3.12", "3.13")


def _tf_requirements(reqs: list[str]) -> dict[str, str]:
    parsed = [Requirement(r) for r in reqs]
    return {r.name: str(r.marker) for r in parsed if r.name in targets.TF_DISTRIBUTIONS}


def test_the_model_requirements_use_the_projects_tensorflow_markers():
    project = PYPROJECT["project"]
    declared = _tf_requirements(project["dependencies"] + project["optional-dependencies"]["cpu"])
    logged = _tf_requirements(
        platforms.model_requirements({"mlflow": "1", "tensorflow": "2.21.0", "numpy": "2"})
    )
    assert (
        declared
        == logged
        == {
            "tensorflow": str(Requirement(f"x; {platforms.NOT_LINUX_X86_64}").marker),
            "tensorflow-cpu": str(Requirement(f"x; {platforms.LINUX_X86_64}").marker),
        }
    )


def test_the_wheel_check_fails_a_pin_without_a_wheel_for_the_target():
    assert targets.without_wheels({"tensorflow-cpu": "2.21.0"}, "linux-aarch64", "3.12")
    assert targets.without_wheels({"tensorflow-cpu": "2.21.0"}, "macos-arm64", "3.11")
    assert targets.without_wheels({"tensorflow": "2.21.0"}, "linux-x86_64", "3.14")
    assert not targets.without_wheels({"tensorflow-cpu": "2.21.0"}, "linux-x86_64", "3.13")
    assert targets.without_wheels({"numpy": "0.0.1"}, "linux-x86_64", "3.11")  # not locked


# --- the Python `make install` builds with ------------------------------------------------


def _fake_python(folder: Path, name: str, version: str | None) -> Path:
    """A command that answers the version query like a Python would (None: exits 127)."""
    path = folder / name
    body = f"echo {version}" if version else "exit 127"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def test_make_install_refuses_python_3_14_in_one_line(tmp_path):
    fake = _fake_python(tmp_path, "python3.14", "3.14")
    # As a user types it: not a sub-make of `make test` (which would add "Entering directory").
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    proc = subprocess.run(
        ["make", "-n", "install", f"PYTHON={fake}", f"VENV={tmp_path / 'venv'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert "3.14" in lines[0] and "3.11, 3.12, 3.13" in lines[0]


def test_the_picker_runs_candidates_and_skips_those_that_do_not_work(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_python(bin_dir, "python3.11", None)  # a pyenv shim without that version
    _fake_python(bin_dir, "python3.12", "3.12")
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"}
    pick = [str(ROOT / "tools" / "pick-python"), "", str(tmp_path / "no-venv")]
    proc = subprocess.run(pick, capture_output=True, text=True, env=env)
    assert (proc.returncode, proc.stdout.strip()) == (0, "python3.12")
    _fake_python(bin_dir, "python3.12", "3.10")
    _fake_python(bin_dir, "python3.13", None)
    _fake_python(bin_dir, "python3", "3.14")
    _fake_python(bin_dir, "python", "2.7")
    proc = subprocess.run(pick, capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and proc.stdout.startswith("error: ")
    # An explicit choice is used or refused, never replaced by a working one.
    explicit = [pick[0], str(bin_dir / "python3.13"), pick[2]]
    proc = subprocess.run(explicit, capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "does not run" in proc.stdout


# --- precision by CPU ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "want"),
    [
        ({"avx512f", "avx512_bf16", "fma"}, "mixed_bfloat16"),  # Zen 4 / Cooper Lake
        ({"avx512f", "amx_bf16", "amx_tile"}, "mixed_bfloat16"),  # Sapphire Rapids
        ({"fp", "asimd", "bf16"}, "mixed_bfloat16"),  # Graviton 3 (/proc/cpuinfo Features)
        ({"feat_bf16", "feat_fp16"}, "mixed_bfloat16"),  # Apple M2+ (sysctl hw.optional.arm)
        ({"avx512f", "avx2", "fma"}, "float32"),  # Skylake-X: AVX-512 without BF16
        ({"avx2", "fma"}, "float32"),
        ({"fp", "asimd"}, "float32"),  # Graviton 2, Apple M1
        (set(), "float32"),  # flags unreadable
    ],
)
def test_auto_precision_is_bf16_only_where_the_cpu_has_it(flags, want):
    assert platforms.resolve_precision("auto", frozenset(flags)) == want


def test_an_explicit_precision_is_kept_with_a_warning_when_emulated(caplog):
    assert platforms.resolve_precision("float32", frozenset({"avx512_bf16"})) == "float32"
    assert not caplog.records
    assert platforms.resolve_precision("mixed_bfloat16", frozenset({"avx2"})) == "mixed_bfloat16"
    assert "emulated" in caplog.text
    with pytest.raises(ValueError, match="bfloat16"):
        platforms.resolve_precision("bfloat16", frozenset())


def test_this_machine_resolves_auto_from_its_own_flags():
    flags = platforms.cpu_flags()
    want = "mixed_bfloat16" if flags & platforms.BF16_FLAGS else "float32"
    assert platforms.resolve_precision("auto") == want


# --- resolution for every target (resolver dry runs against the package index) -----------

COMBOS = [
    (target, python, label)
    for target in targets.TARGETS
    for python in targets.PYTHONS
    for label in targets.EXTRA_SETS
]


@pytest.fixture(scope="session")
def resolved():
    """Every target × Python × extra set, resolved in parallel: pins or the resolver's error."""

    def one(combo):
        target, python, label = combo
        try:
            return targets.resolve_project(target, python, targets.EXTRA_SETS[label])
        except RuntimeError as exc:
            return str(exc)

    with ThreadPoolExecutor(6) as pool:
        return dict(zip(COMBOS, pool.map(one, COMBOS), strict=True))


@pytest.mark.slow
def test_the_lock_matches_pyproject():
    proc = subprocess.run(
        [targets.UV, "lock", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
@pytest.mark.xdist_group("resolutions")  # resolved once, by the module fixture
@pytest.mark.parametrize("combo", COMBOS, ids=["-".join(c) for c in COMBOS])
def test_every_target_and_python_resolves_to_the_lock_with_wheels(resolved, combo):
    target, python, label = combo
    pins = resolved[combo]
    assert isinstance(pins, dict), f"{combo} does not resolve: {pins}"
    tf = {name for name in pins if name in targets.TF_DISTRIBUTIONS}
    want = "tensorflow-cpu" if target == "linux-x86_64" and label == "cpu" else "tensorflow"
    assert tf == {want}
    if label == "gpu" and target == "linux-x86_64":
        assert any(name.startswith("nvidia-") for name in pins), "and-cuda brought no CUDA"
    assert targets.without_wheels(pins, target, python) == []


@pytest.mark.slow
@pytest.mark.parametrize("target", targets.TARGETS)
def test_the_model_requirements_resolve_on_every_target(tmp_path, target):
    dist, version = _installed_tensorflow()
    import keras
    import mlflow
    import numpy

    reqs = platforms.model_requirements(
        {
            "mlflow": mlflow.__version__,
            "tensorflow": version,
            "keras": keras.__version__,
            "numpy": numpy.__version__,
        }
    )
    path = tmp_path / "requirements.txt"
    path.write_text("\n".join(reqs) + "\n")
    with ThreadPoolExecutor(3) as pool:  # network-bound dry runs
        resolved = list(pool.map(lambda py: targets.resolve(path, target, py), targets.PYTHONS))
    for pins in resolved:
        tf = {name for name in pins if name in targets.TF_DISTRIBUTIONS}
        assert tf == {"tensorflow-cpu" if target == "linux-x86_64" else "tensorflow"}
        assert pins[tf.pop()] == version


# --- really run where this machine can ----------------------------------------------------


def _pyenv_python(version: str) -> Path:
    """The real CPython ``version`` pyenv installed (pyenv's PATH shims exit 127)."""
    try:
        root = Path(
            subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip()
        )
    except OSError:
        root = Path.home() / ".pyenv"
    found = sorted((root / "versions").glob(f"{version}.*/bin/python{version}"))
    if not found:
        pytest.fail(f"no CPython {version} under {root}/versions: `pyenv install {version}`")
    return found[-1]


def _installed_tensorflow() -> tuple[str, str]:
    """``(distribution, version)`` of the TensorFlow build installed here, without importing it."""
    from importlib import metadata

    for name in platforms.TF_DISTRIBUTIONS:
        with contextlib.suppress(metadata.PackageNotFoundError):
            return name, metadata.version(name)
    raise RuntimeError("TensorFlow is not installed: `make install`")


def _clean_env(home: Path | None = None) -> dict[str, str]:
    """A shell-like environment: no venv of this test run on PATH, no MLflow/DVC settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "DVC_", "VIRTUAL_ENV", "PYTHON"))
    }
    env["PATH"] = os.pathsep.join(
        p for p in env["PATH"].split(os.pathsep) if Path(p) != Path(sys.executable).parent
    )
    for key in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
        env.setdefault(key, "fmnist test")
    for key in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        env.setdefault(key, "test@fashion-mnist-mlops.invalid")
    if home is not None:
        env["HOME"] = str(home)
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 900) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("version", ["3.12", "3.13"])
def test_make_install_on_python_runs_the_smoke_pipeline(
    tmp_path, version, project_copier, real_data
):
    python = _pyenv_python(version)
    project = project_copier(tmp_path / "project")
    env = _clean_env()
    # A throwaway venv that runs one pipeline: compiling all its bytecode would cost more than
    # it saves (outside the test's environment nothing sets PYTHONDONTWRITEBYTECODE).
    out = _run(["make", "install", f"PYTHON={python}", "UV_COMPILE_BYTECODE=0"], project, env)
    assert f"with {python} {version}." in out, out
    bin_dir = project / ".venv" / "bin"
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    _run(
        [str(bin_dir / "python"), "src/params.py", "+experiment=smoke"],
        project,
        env,
    )
    _run(["git", "commit", "-qam", "smoke params"], project, env)
    _run([str(bin_dir / "dvc"), "repro"], project, env)
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.3  # 2 epochs on 512 images; chance is 0.1
    done = subprocess.run(
        [str(bin_dir / "python"), "-c", "import sys, tensorflow; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.stdout.strip().splitlines()[-1] == str(tuple(int(v) for v in version.split(".")))


@pytest.mark.slow
def test_prepare_downloads_from_base_url_without_the_system_folder_or_keras_cache(
    tmp_path, project_copier, real_data, subprocess_env
):
    """The data path of a machine without apt (macOS): the official layout over HTTP."""
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(real_data))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        project = project_copier(tmp_path / "project")
        home = tmp_path / "home"
        home.mkdir()
        env = {**subprocess_env, "HOME": str(home)}
        overrides = [
            "+experiment=smoke",
            f"data.system_dir={tmp_path / 'no-such-folder'}",
            f"data.base_url=http://127.0.0.1:{server.server_port}/",
        ]
        _run([sys.executable, "src/params.py", *overrides], project, env)
        _run(["git", "commit", "-qam", "no system data"], project, env)
        _run([str(Path(sys.executable).parent / "dvc"), "repro", "prepare"], project, env)
    finally:
        server.shutdown()
    meta = json.loads((project / "data" / "prepared" / "meta.json").read_text())
    assert meta["source"].startswith(f"download (http://127.0.0.1:{server.server_port}/")
    cache = home / ".keras" / "datasets" / "fashion-mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(p.name for p in real_data.iterdir())


def test_a_stage_without_tensorflow_installed_says_how_to_install_it(tmp_path, project_root):
    """`pip install -e .` on Linux x86_64 installs no TensorFlow (it is the cpu/gpu extra)."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('tensorflow', 'keras'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Hide())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(hide)}
    proc = subprocess.run(
        [sys.executable, "src/train.py", f"paths.scratch={tmp_path / 's'}"],
        cwd=project_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "TensorFlow is not installed" in lines[0], lines
    assert "pip install -e '.[cpu]'" in lines[0]
