"""Resolve the lock for every supported target × Python without installing anything.

`uv pip compile` with `--python-platform` is a resolver dry run for another machine; the
wheel check reads the wheel file names uv.lock records for every pin. Prints a table; the
packaging tests call the same functions.

Usage: python tools/targets.py
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parents[1]
UV = str(Path(sys.executable).parent / "uv")
# target -> (uv's --python-platform, what its wheels' platform tags must match)
TARGETS = {
    "linux-x86_64": ("x86_64-manylinux_2_28", r"(manylinux\d*(_\d+_\d+)?_x86_64)"),
    "linux-aarch64": ("aarch64-manylinux_2_28", r"(manylinux\d*(_\d+_\d+)?_aarch64)"),
    "macos-arm64": ("aarch64-apple-darwin", r"(macosx_\d+_\d+_(arm64|universal2))"),
}
PYTHONS = ("3.11", "3.12", "3.13")
# What `make install` installs, and the GPU variant (which replaces the cpu extra).
EXTRA_SETS = {"cpu": ("cpu", "dev", "s3"), "gpu": ("gpu", "s3")}
# Pure-Python packages published only as source archives (checked: no compiled code).
SDIST_ONLY = {"antlr4-python3-runtime"}
TF_DISTRIBUTIONS = {"tensorflow", "tensorflow-cpu"}


def lock_pins(extras: tuple[str, ...]) -> str:
    """The lock's pins for ``extras`` as a constraints file text (with environment markers)."""
    cmd = [UV, "export", "-q", "--frozen", "--no-hashes", "--no-emit-project"]
    cmd += [a for e in extras for a in ("--extra", e)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout


def resolve(requirements: Path, target: str, python: str, *args: str) -> dict[str, str]:
    """Resolve ``requirements`` (pyproject.toml or a requirements file) for another machine.

    Returns:
        ``{normalized name: version}``.

    Raises:
        RuntimeError: The resolver failed; its message is the error's.
    """
    cmd = [UV, "pip", "compile", str(requirements), *args, "-q", "--no-header", "--no-annotate"]
    cmd += ["--python-platform", TARGETS[target][0], "--python-version", python]
    # The target Python is only a resolver setting: without an interpreter named, uv tries to
    # download one matching ``python`` first (10 s of failed retries offline, every call).
    cmd += ["--python", sys.executable, "--no-python-downloads"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr else "failed")
    pins = {}
    for line in done.stdout.splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;]+)", line)
        if m:
            pins[canonicalize_name(m.group(1))] = m.group(3)
    return pins


def resolve_project(target: str, python: str, extras: tuple[str, ...]) -> dict[str, str]:
    """Resolve pyproject.toml with ``extras``, constrained to the lock's pins."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as pins:
        pins.write(lock_pins(extras))
        pins.flush()
        args = [a for e in extras for a in ("--extra", e)]
        return resolve(ROOT / "pyproject.toml", target, python, *args, "-c", pins.name)


def locked_files() -> dict[tuple[str, str], dict]:
    """``{(name, version): {"wheels": [file names], "sdist": bool}}`` from uv.lock."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    files = {}
    for pkg in lock["package"]:
        wheels = [w["url"].rsplit("/", 1)[-1] for w in pkg.get("wheels", [])]
        key = (canonicalize_name(pkg["name"]), pkg["version"])
        files[key] = {"wheels": wheels, "sdist": "sdist" in pkg}
    return files


def _wheel_fits(filename: str, target: str, python: str) -> bool:
    cp = "cp" + python.replace(".", "")
    minor = int(python.split(".")[1])
    platform_re = re.compile(rf"^(any|{TARGETS[target][1]})$")
    for tag in parse_wheel_filename(filename)[3]:
        if not platform_re.match(tag.platform):
            continue
        if tag.interpreter in ("py3", f"py3{minor}") and tag.abi == "none":
            return True
        if tag.interpreter == cp and tag.abi in (cp, "none", "abi3"):
            return True
        m = re.fullmatch(r"cp3(\d+)", tag.interpreter)
        if m and tag.abi == "abi3" and int(m.group(1)) <= minor:
            return True
    return False


def without_wheels(pins: dict[str, str], target: str, python: str) -> list[str]:
    """Pins with no wheel for the target that are not listed pure-Python sdists."""
    files = locked_files()
    bad = []
    for name, version in sorted(pins.items()):
        entry = files.get((name, version))
        if entry is None:
            bad.append(f"{name}=={version} (not in uv.lock)")
        elif not any(_wheel_fits(w, target, python) for w in entry["wheels"]) and not (
            name in SDIST_ONLY and entry["sdist"]
        ):
            bad.append(f"{name}=={version}")
    return bad


def main() -> None:
    """Print target × Python × extras → resolves, TensorFlow build, pins without a wheel."""
    print("| target | Python | extras | resolves | TensorFlow | no wheel |")
    print("| --- | --- | --- | --- | --- | --- |")
    for target in TARGETS:
        for python in PYTHONS:
            for label, extras in EXTRA_SETS.items():
                try:
                    pins = resolve_project(target, python, extras)
                except RuntimeError as exc:
                    print(f"| {target} | {python} | {label} | no: {exc} | | |")
                    continue
                tf = ", ".join(f"{n} {v}" for n, v in pins.items() if n in TF_DISTRIBUTIONS)
                missing = ", ".join(without_wheels(pins, target, python)) or "none"
                print(
                    f"| {target} | {python} | {label} | yes ({len(pins)} pins) | {tf} | {missing} |"
                )


if __name__ == "__main__":
    main()
