"""``make reproduce``: rebuild a registered version from what it recorded, and judge the rebuild.

Reads the version's run (:mod:`source`), builds its commit with that commit's environment and
its own stage commands against a throwaway store (:mod:`build`), checks the data, retrains and
evaluates, compares (:mod:`comparison`) and records the result in the user's store: a
reproduction run linked to the original, and the version tags ``reproduced`` (the verdict),
``reproduced_at`` and ``reproduced_run``. No version is registered and no alias moves.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import sys
import time
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow.tracking import MlflowClient

from fmnist_mlops.config.commands import ReproduceCfg
from fmnist_mlops.data.splits import split_sha256
from fmnist_mlops.reproduce import build, comparison, source
from fmnist_mlops.runtime.errors import ConfigError, DataError, Interrupted
from fmnist_mlops.runtime.folders import writable_dir
from fmnist_mlops.runtime.paths import MODEL_FILE, RUN_FILE, project_root, resolve
from fmnist_mlops.tracking.context import StageContext
from fmnist_mlops.tracking.scratch import new_folder
from fmnist_mlops.tracking.tags import run_tags
from fmnist_mlops.train import provenance

log = logging.getLogger(__name__)

PHASES = ("environment", "data", "training", "evaluation", "comparison")


def reproduce(ctx: StageContext, settings: ReproduceCfg) -> dict[str, Any]:
    """Rebuild ``settings.version`` of ``registry.model_name`` and compare it with the record.

    Returns:
        The verdict and why, the version and both runs, the wall seconds of each phase.

    Raises:
        RegistryError: The version cannot be rebuilt (refused before any work).
        DataError: The rebuilt data does not match the recorded digests (nothing trained).
    """
    reg = ctx.config.registry
    uv = _uv()
    envs = writable_dir("reproduce.envs", resolve(settings.envs))
    ctx.track()
    client = MlflowClient()
    repo = project_root()
    src = source.read_source(client, reg.model_name, settings.version, repo)
    log.info(
        "reproduce: %s version %s, run %s, commit %s%s",
        src.name,
        src.version,
        src.run_id,
        src.commit[:12],
        " + its recorded uncommitted diff" if src.dirty else "",
    )
    seconds: dict[str, float] = {}
    # A scratch folder owned by this process: `make clean` leaves it alone while it runs.
    home = new_folder(ctx.config.paths.scratch, "reproduce")
    with build.worktree(repo, src.commit, home, keep=settings.keep) as tree:
        started = time.perf_counter()
        if src.diff:
            build.apply_diff(tree, src.diff)
        bin_dir, reused = build.environment(tree, envs, uv)
        seconds["environment"] = time.perf_counter() - started
        log.info(
            "reproduce: environment %s in %.1f s",
            "reused" if reused else "built",
            seconds["environment"],
        )
        store_uri = f"sqlite:///{tree.parent / 'mlflow.db'}"
        _write_params(tree, src.config_text, store_uri)
        commands = build.stage_commands(tree)
        env = {"MLFLOW_TRACKING_URI": store_uri, **_thread_env(src.tags)}
        logs = tree.parent
        started = time.perf_counter()
        _prepare(commands["prepare"], tree, bin_dir, env, logs / "prepare.log")
        data_rows = _check_data(tree / "data" / "prepared", src)
        seconds["data"] = time.perf_counter() - started
        for phase, stage in (("training", "train"), ("evaluation", "evaluate")):
            started = time.perf_counter()
            log.info("reproduce: %s (%s)", phase, commands[stage].split(" -cd ")[0])
            build.run_stage(commands[stage], tree, bin_dir, env, logs / f"{stage}.log")
            seconds[phase] = time.perf_counter() - started
        started = time.perf_counter()
        judged, rebuilt, text = _judge(src, tree, store_uri, settings, reused, data_rows)
        seconds["comparison"] = time.perf_counter() - started
    seconds["total"] = sum(seconds[p] for p in PHASES)
    text += "\nwall time: " + ", ".join(f"{p} {seconds[p]:.1f} s" for p in (*PHASES, "total"))
    print(text)
    run_id = _record(client, src, judged, rebuilt, text, seconds)
    return {
        "verdict": judged.verdict,
        "why": judged.why,
        "model_name": src.name,
        "version": src.version,
        "run_id": src.run_id,
        "reproduction_run_id": run_id,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "not_recorded": src.missing,
    }


def _judge(src, tree: Path, store_uri: str, settings: ReproduceCfg, reused: bool, data_rows):
    """Compare the rebuilt run (in the throwaway store) with the record: verdict, side, table."""
    rebuilt_client = MlflowClient(store_uri, registry_uri=store_uri)
    rebuilt_id = json.loads((tree / RUN_FILE).read_text())["run_id"]
    rebuilt_run = rebuilt_client.get_run(rebuilt_id)
    rebuilt = _side(
        rebuilt_run.data.metrics,
        source.epoch_metrics(rebuilt_client, rebuilt_id),
        tree / MODEL_FILE,
    )
    recorded = _side(
        src.metrics, src.epochs, source.checkpoint(src.run_id, tree.parent / "recorded")
    )
    judged = comparison.compare(recorded, rebuilt, settings.tolerance)
    context = _context_rows(src, rebuilt_run.data.tags, tree, reused, data_rows)
    return judged, rebuilt, comparison.table(judged, context)


def _uv() -> Path:
    found = Path(sys.executable).parent / "uv"
    if found.is_file():
        return found
    which = shutil.which("uv")
    if which is None:
        raise ConfigError(
            "uv not found (make install puts it in .venv/bin): it builds environments"
        )
    return Path(which)


def _write_params(tree: Path, config_text: str, store_uri: str) -> None:
    """The recorded config as the commit's ``params.yaml``, pointed at the throwaway store.

    Where things live is the worktree's (the data it prepares, its scratch), never a path
    of the original run, so nothing outside the worktree is written.
    """
    cfg = yaml.safe_load(config_text)
    cfg.setdefault("mlflow", {})["tracking_uri"] = store_uri
    cfg.setdefault("registry", {})["lock_url"] = None
    cfg["paths"] = {**cfg.get("paths", {}), "prepared": "data/prepared", "out": None}
    cfg["paths"]["scratch"] = "scratch"
    cfg["run_id"] = None
    (tree / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def _prepare(cmd: str, tree: Path, bin_dir: Path, env: dict[str, str], log: Path) -> None:
    """The commit's ``prepare``; its refusal of the data (exit 2) is a data mismatch."""
    try:
        build.run_stage(cmd, tree, bin_dir, env, log)
    except build.BuildError as exc:
        if exc.code == 2:
            raise DataError(
                f"data mismatch: the commit's prepare refused the data: {exc.last}"
            ) from None
        raise


def _thread_env(tags: dict[str, str]) -> dict[str, str]:
    """The thread settings' environment variables the run recorded (set ones only)."""
    return {v: tags[f"threads.{v}"] for v in provenance.THREAD_VARS if tags.get(f"threads.{v}")}


def _check_data(prepared: Path, src: source.Source) -> list[tuple[str, str, str]]:
    """Compare the rebuilt data's digests with the recorded ones; refuse a mismatch."""
    meta = json.loads((prepared / "meta.json").read_text())
    raw = meta.get("sha256", {})
    splits = split_sha256(prepared)
    wrong = [
        f"{name} sha256 {raw.get(name, 'missing')[:12]} rebuilt, {digest[:12]} recorded"
        for name, digest in src.data_digests.items()
        if raw.get(name) != digest
    ]
    wrong += [
        f"split {name} sha256 {splits.get(name, 'missing')[:12]} rebuilt, {digest[:12]} recorded"
        for name, digest in src.split_digests.items()
        if splits.get(name) != digest
    ]
    if wrong:
        raise DataError(f"data mismatch: {'; '.join(wrong)}: nothing trained")
    rows = [("data: raw files", f"{len(src.data_digests)} digests", "same digests")]
    if src.split_digests:
        rows.append(("data: splits", f"{len(src.split_digests)} digests", "same digests"))
    else:
        rows.append(("data: splits", "not recorded", f"{len(splits)} digests (not compared)"))
    return rows


def checkpoint_sha256(path: Path) -> str:
    """SHA-256 over the weights stored in a ``.keras`` file (names and values, in order).

    Read from the file's HDF5 part without building the model, so checkpoints of any commit
    are digested the same way.
    """
    import h5py

    digest = hashlib.sha256()
    with zipfile.ZipFile(path) as archive:
        data = archive.read("model.weights.h5")
    with h5py.File(io.BytesIO(data), "r") as weights:
        names: list[str] = []
        weights.visititems(
            lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None
        )
        for name in sorted(names):
            digest.update(name.encode())
            digest.update(weights[name][()].tobytes())
    return digest.hexdigest()


def _side(metrics: dict[str, float], epochs: dict[str, list[float]], model: Path) -> dict:
    """One side of the comparison: its run's metrics, epochs and best checkpoint's digest."""
    return {
        **{key: metrics.get(key) for key in comparison.SUMMARY_METRICS},
        "epochs": epochs,
        "weights_sha256": checkpoint_sha256(model),
    }


def _context_rows(
    src, rebuilt_tags, tree: Path, reused: bool, data_rows
) -> list[tuple[str, str, str]]:
    """What the two sides ran on: code, environment, machine, precision, data."""
    lock = hashlib.sha256((tree / "uv.lock").read_bytes()).hexdigest()
    rows = [
        ("code", f"{src.commit[:12]}{' + diff' if src.dirty else ''}", "same (worktree)"),
        (
            "env.uv_lock_sha256",
            src.tags.get("env.uv_lock_sha256", "not recorded")[:12],
            f"{lock[:12]} ({'reused' if reused else 'built'})",
        ),
    ]
    now = provenance.machine()
    for key in (*provenance.MACHINE_TAGS, "precision.resolved"):
        mine = rebuilt_tags.get(key, now.get(key, "not recorded"))
        rows.append((key, src.tags.get(key, "not recorded")[:40], str(mine)[:40]))
    rows += data_rows
    if src.missing:
        rows.append(("not recorded", ", ".join(src.missing), "(recorded since make reproduce)"))
    return rows


def _record(client, src, judged, rebuilt, text: str, seconds: dict[str, float]) -> str:
    """The reproduction run (linked to the original) and the version's tags."""
    tags = {
        **run_tags("reproduce"),
        "reproduces_run": src.run_id,
        "reproduces_version": f"{src.name}/{src.version}",
        "reproduced": judged.verdict,
        "weights_sha256.checkpoint": rebuilt["weights_sha256"],
    }
    name = f"reproduce {src.name} v{src.version}"
    with mlflow.start_run(experiment_id=src.experiment_id, run_name=name, tags=tags) as run:
        try:
            epochs = rebuilt["epochs"]
            for epoch in range(max((len(v) for v in epochs.values()), default=0)):
                at = {k: v[epoch] for k, v in epochs.items() if epoch < len(v)}
                mlflow.log_metrics(at, step=epoch)
            final = {k: rebuilt[k] for k in ("test_accuracy", "test_loss", "fit_seconds")}
            mlflow.log_metrics({k: float(v) for k, v in final.items() if v is not None})
            mlflow.log_metrics({f"seconds_{k}": v for k, v in seconds.items()})
            mlflow.log_text(text, "reproduce/comparison.txt")
            mlflow.log_dict(
                {"verdict": judged.verdict, "why": judged.why}, "reproduce/verdict.json"
            )
        except Interrupted:
            mlflow.end_run(status="KILLED")
            raise
    when = datetime.now(UTC).isoformat(timespec="seconds")
    for key, value in (
        ("reproduced", judged.verdict),
        ("reproduced_at", when),
        ("reproduced_run", run.info.run_id),
    ):
        client.set_model_version_tag(src.name, str(src.version), key, value)
    return run.info.run_id
