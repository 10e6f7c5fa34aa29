"""What every run is tagged with: the code it ran, its stage, the process that owns it.

The code is the git commit, whether the tree was dirty and a digest of the uncommitted diff.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from fmnist_mlops.runtime import owner
from fmnist_mlops.runtime.paths import project_root


def git_tags(root: Path | None = None) -> dict[str, str]:
    """Return the checkout's code identity as tags (empty outside git).

    ``git_commit`` and ``git_dirty``; on a dirty tree also ``git_diff_sha256``, the digest of
    the uncommitted change to tracked files, so two runs of one commit can tell whether they
    ran the same code.
    """
    root = root or project_root()

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        diff = uncommitted_diff(root)
    except (OSError, subprocess.SubprocessError):
        return {}
    tags = {"git_commit": commit, "git_dirty": str(bool(diff)).lower()}
    if diff:
        tags["git_diff_sha256"] = diff_sha256(diff)
    return tags


def uncommitted_diff(root: Path | None = None) -> str:
    """The uncommitted change to tracked files (``git diff HEAD --binary``; "" when clean).

    What a run trained from a dirty tree records, and what reproducing it applies on top of
    its commit (``git apply``).

    Raises:
        OSError, subprocess.SubprocessError: git is missing or ``root`` is not a checkout.
    """
    return subprocess.run(
        ["git", "diff", "HEAD", "--no-ext-diff", "--binary"],
        cwd=root or project_root(),
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout


def diff_sha256(diff: str) -> str:
    """The ``git_diff_sha256`` tag of a diff."""
    return hashlib.sha256(diff.encode()).hexdigest()


CODE_TAGS = ("git_commit", "git_dirty", "git_diff_sha256")


def same_code(tags: Mapping[str, str]) -> bool:
    """Whether a run with these tags ran the code checked out now (commit and any change)."""
    now = git_tags()
    return bool(now) and all(tags.get(key) == now.get(key) for key in CODE_TAGS)


def run_tags(stage: str) -> dict[str, str]:
    """Tags every run gets: stage, host, pid + process start, git state, DVC experiment."""
    tags = {"stage": stage, **owner.tags()}
    tags.update(git_tags())
    for env, tag in (("DVC_EXP_NAME", "dvc_exp_name"), ("DVC_EXP_BASELINE_REV", "dvc_baseline")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags
