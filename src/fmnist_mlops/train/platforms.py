"""What depends on the machine: the TensorFlow distribution and the training precision.

Kept free of TensorFlow imports: the requirement lines and the CPU detection are needed by
commands and tests that never train.
"""

from __future__ import annotations

import logging
import platform
import subprocess
import sys
from pathlib import Path

from fmnist_mlops.config.schema import PRECISIONS

log = logging.getLogger(__name__)

# The same markers as pyproject.toml (tests/test_packaging.py checks they agree):
# `tensorflow-cpu` is the leaner build and exists only for Linux x86_64 (and Windows);
# Linux aarch64 and macOS arm64 have the one `tensorflow` build.
LINUX_X86_64 = "sys_platform == 'linux' and platform_machine == 'x86_64'"
NOT_LINUX_X86_64 = "sys_platform != 'linux' or platform_machine != 'x86_64'"
TF_DISTRIBUTIONS = ("tensorflow-cpu", "tensorflow")

# CPU features that make bfloat16 matrix math native (else Keras emulates it, slower than
# float32): AVX-512 BF16 (x86 `avx512_bf16`) or AMX (`amx_bf16`); Arm's BF16 extension is
# `bf16` in /proc/cpuinfo and `FEAT_BF16` in macOS's sysctl.
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16", "feat_bf16"})


def model_requirements(pins: dict[str, str]) -> list[str]:
    """Requirement lines for a logged model's environment, valid on every supported target.

    Args:
        pins: Exact versions of the packages the model needs, by distribution name; TensorFlow
            as ``tensorflow`` (whichever build is installed here).

    Returns:
        ``name==version`` lines; TensorFlow as two lines with environment markers, so the model's
        environment (and a Dockerfile built from it) resolves on Linux x86_64 and aarch64 and
        on macOS arm64.
    """
    lines = [f"{name}=={version}" for name, version in pins.items() if name != "tensorflow"]
    tf = pins["tensorflow"]
    return [
        *lines,
        f"tensorflow-cpu=={tf}; {LINUX_X86_64}",
        f"tensorflow=={tf}; {NOT_LINUX_X86_64}",
    ]


def cpu_flags() -> frozenset[str]:
    """Lower-case CPU feature flags of this machine (empty when they cannot be read)."""
    if sys.platform == "linux":
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            return frozenset()
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                return frozenset(value.lower().split())
        return frozenset()
    if sys.platform == "darwin":
        try:
            out = subprocess.run(
                ["sysctl", "hw.optional"], capture_output=True, text=True, timeout=5
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return frozenset()
        return frozenset(
            line.split(":")[0].rsplit(".", 1)[-1].lower()
            for line in out.splitlines()
            if line.strip().endswith(": 1")
        )
    return frozenset()


def resolve_precision(requested: str, flags: frozenset[str] | None = None) -> str:
    """The Keras dtype policy to train with.

    Args:
        requested: ``auto`` (``mixed_bfloat16`` when the CPU computes bfloat16 natively, else
            ``float32``), or an explicit ``float32`` / ``mixed_bfloat16``, kept as given (with
            a warning when bfloat16 would be emulated).
        flags: CPU feature flags; this machine's when None.

    Returns:
        ``float32`` or ``mixed_bfloat16``.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"train.precision={requested!r}: accepted {PRECISIONS}")
    native = bool(BF16_FLAGS & (cpu_flags() if flags is None else flags))
    if requested == "auto":
        return "mixed_bfloat16" if native else "float32"
    if requested == "mixed_bfloat16" and not native:
        log.warning(
            "train.precision=mixed_bfloat16 on a CPU without native bfloat16 (%s): emulated, "
            "usually slower than float32; train.precision=auto picks for this machine",
            platform.machine() or "unknown CPU",
        )
    return requested
