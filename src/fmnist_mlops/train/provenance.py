"""What a training run records so it can be rebuilt and its rebuild judged (``make reproduce``).

The code (commit, dirty flag, the uncommitted diff itself), the environment (Python, the
lock's digest, every installed package's version), the machine (CPU model and flags, usable
cores, thread settings) and whether TensorFlow's ops were deterministic. The config, seed,
data digests and resolved precision are logged by the training itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow

from fmnist_mlops.data.splits import SPLITS, split_sha256
from fmnist_mlops.runtime.paths import project_root
from fmnist_mlops.tracking.tags import diff_sha256, uncommitted_diff
from fmnist_mlops.train.platforms import cpu_flags

# Artifact paths of a training run (the reproduction reads them back).
DIFF_ARTIFACT = "code/uncommitted.diff"
PACKAGES_ARTIFACT = "environment/packages.txt"
MACHINE_ARTIFACT = "environment/machine.json"

# Environment variables that set how many threads the maths uses.
THREAD_VARS = ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")

# Each prepared split's digest, ``data.split_sha256.<split>`` (beside the raw files' tags).
SPLIT_DIGEST_TAG = "data.split_sha256."

# Tags a machine is compared on: equal on both sides = the same machine class.
MACHINE_TAGS = (
    "host.cpu_model",
    "host.cpu_flags_sha256",
    "host.cpus_usable",
    "threads.intra_op",
    "threads.inter_op",
    "env.python",
    "train.op_determinism",
)


# What :func:`record` and the train stage add for a rebuild (absent on older runs).
REBUILD_TAGS = (
    "weights_sha256",
    "env.uv_lock_sha256",
    "env.packages_sha256",
    *MACHINE_TAGS,
    *(f"{SPLIT_DIGEST_TAG}{name}" for name in SPLITS),
)


def cpu_model() -> str:
    """The CPU's model name ("" when it cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware"):
                return value.strip()
    except OSError:
        pass
    return platform.processor()


def packages() -> list[str]:
    """Every installed distribution as ``name==version``, sorted."""
    found = {f"{(d.metadata['Name'] or '').lower()}=={d.version}" for d in metadata.distributions()}
    return sorted(found)


def threads() -> dict[str, str]:
    """Thread settings, the env vars that set them, and whether op determinism is on.

    TensorFlow's 0 means its default (every usable core). Tagged after the fit, which turns
    determinism on.
    """
    import tensorflow as tf
    from tensorflow.python.framework import config as tf_config

    found = {
        "threads.intra_op": str(tf.config.threading.get_intra_op_parallelism_threads()),
        "threads.inter_op": str(tf.config.threading.get_inter_op_parallelism_threads()),
        # Only the internal module says whether enable_op_determinism() is in force.
        "train.op_determinism": str(tf_config.is_op_determinism_enabled()).lower(),
    }
    for var in THREAD_VARS:
        found[f"threads.{var}"] = os.environ.get(var, "")
    return found


def machine() -> dict[str, Any]:
    """The machine's description: the tags :data:`MACHINE_TAGS` plus the full flag list."""
    flags = sorted(cpu_flags())
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "host.cpu_model": cpu_model(),
        "host.cpu_flags_sha256": hashlib.sha256(" ".join(flags).encode()).hexdigest(),
        "host.cpus": str(os.cpu_count()),
        "host.cpus_usable": str(usable),
        "env.python": platform.python_version(),
        "env.platform": platform.platform(),
        "cpu_flags": flags,
    }


def record(prepared: Path, root: Path | None = None) -> dict[str, str]:
    """Tag the active run with its environment and machine; log the lists and any diff.

    Called at the start of every training segment (a resumed run may continue elsewhere: the
    latest segment's machine is what the tags say).

    Args:
        prepared: The prepared split's folder: each split's digest is recorded
            (``data.split_sha256.<name>``), next to the raw files' (``data.sha256.<name>``).
        root: The checkout (default: this project's).

    Returns:
        The tags set.
    """
    root = root or project_root()
    described = machine()
    pins = packages()
    tags = {k: v for k, v in described.items() if k != "cpu_flags"}
    tags.update({f"{SPLIT_DIGEST_TAG}{k}": v for k, v in split_sha256(prepared).items()})
    tags["env.packages_sha256"] = hashlib.sha256("\n".join(pins).encode()).hexdigest()
    lock = root / "uv.lock"
    if lock.is_file():
        tags["env.uv_lock_sha256"] = hashlib.sha256(lock.read_bytes()).hexdigest()
    mlflow.set_tags(tags)
    mlflow.log_text("\n".join(pins) + "\n", PACKAGES_ARTIFACT)
    mlflow.log_text(json.dumps({**described, **tags}, indent=2), MACHINE_ARTIFACT)
    try:
        diff = uncommitted_diff(root)
    except (OSError, subprocess.SubprocessError):
        diff = ""  # not a git checkout: nothing to record (git_tags records no commit either)
    if diff:
        # The run's git_diff_sha256 tag is the digest of exactly this text.
        mlflow.log_text(diff, DIFF_ARTIFACT)
        tags["git_diff_sha256"] = diff_sha256(diff)
        mlflow.set_tag("git_diff_sha256", tags["git_diff_sha256"])
    return tags
