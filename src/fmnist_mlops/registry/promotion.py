"""The ``register`` and ``rollback`` stages: move ``@champion`` forward if better, or back.

The candidate is registered and takes the alias only when :func:`registry.decide` says so.
Both models are scored on the *current* validation split by the same function, so a champion
trained on other data is never trusted on a number it logged back then.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fmnist_mlops.config.schema import RegistryCfg
from fmnist_mlops.registry import history
from fmnist_mlops.registry.rule import PREVIOUS_TAG, current_champion, decide, registry_lock
from fmnist_mlops.runtime.errors import RegistryError
from fmnist_mlops.runtime.files import write_json
from fmnist_mlops.runtime.folders import read_run, stage_dir
from fmnist_mlops.runtime.paths import METRICS_JSON, PROMOTION_JSON, RUN_FILE
from fmnist_mlops.tracking.context import StageContext
from fmnist_mlops.tracking.scratch import out_dir

log = logging.getLogger(__name__)


def promote(ctx: StageContext, out: Path | None = None) -> dict[str, Any]:
    """Register the evaluated model and move the alias if the promotion rule says so.

    Writes ``reports/promotion.json`` with the decision and both scores.

    Args:
        ctx: The stage's context (:func:`~fmnist_mlops.tracking.context.open_stage`).
        out: With ``run_id``, the folder for ``promotion.json`` (the evaluation's reports);
            by default ``paths.out``, or a new scratch folder when that is null.

    Returns:
        The decision record written to ``reports/promotion.json``.
    """
    config = ctx.config
    paths, run_id = config.paths, config.run_id
    if not run_id:
        out = stage_dir(paths.out, "register")
        run_info = read_run(out)
        metrics_path = out / METRICS_JSON
        if not metrics_path.is_file():
            raise RegistryError(f"{metrics_path} not found: run the evaluate stage first")
        if json.loads(metrics_path.read_text())["run_id"] != run_info["run_id"]:
            raise RegistryError(f"{metrics_path} belongs to another run than {out / RUN_FILE}")
    splits = ctx.splits
    ctx.track()
    if run_id:
        run_info = ctx.named_run()
        if "test_accuracy" not in MlflowClient().get_run(run_id).data.metrics:
            raise RegistryError(
                f"run {run_id} has no test metrics: evaluate it first "
                f"(python src/evaluate.py run_id={run_id})"
            )
        out = out or out_dir(paths.out, "register", paths.scratch)
    reg = config.registry
    client = MlflowClient()
    with registry_lock(reg.model_name, reg.lock_url):
        same = _registered_as(client, reg.model_name, run_info)
        if same is not None:
            return _already_registered(client, reg, run_info, same, out)
        record = _compare_register_move(client, reg, run_info, splits)
    client.set_tag(
        run_info["run_id"], "registry.decision", "promoted" if record["promote"] else "kept"
    )
    client.set_tag(run_info["run_id"], "registry.version", str(record["candidate_version"]))
    write_json(out / PROMOTION_JSON, record)
    log.info(
        "register: version %s %s (%s); %s is version %s",
        record["candidate_version"],
        "promoted" if record["promote"] else "not promoted",
        record["reason"],
        reg.alias,
        record["champion_after"],
    )
    return record


def _registered_as(client: MlflowClient, name: str, run_info: dict[str, Any]):
    """The version that already holds this run's logged model (same weights), or None."""
    for version in client.search_model_versions(f"name='{name}'", max_results=10000):
        if version.run_id == run_info["run_id"] and version.source == run_info["model_uri"]:
            return version
    return None


def _already_registered(client, reg, run_info, version, out: Path) -> dict[str, Any]:
    """Registering the same run and weights again changes nothing, and says so."""
    champ = current_champion(client, reg.model_name, reg.alias)
    holder = int(champ.version) if champ is not None else None
    score_tag = version.tags.get(reg.metric)
    record = {
        **_rule(reg),
        "run_id": run_info["run_id"],
        "candidate_version": int(version.version),
        "candidate_score": float(score_tag) if score_tag is not None else None,
        "champion_version": holder,
        "champion_score": None,
        "promote": False,
        "reason": f"run {run_info['run_id']} is already registered as version "
        f"{version.version} (same weights): nothing registered, nothing moved",
        "champion_after": holder,
    }
    write_json(out / PROMOTION_JSON, record)
    log.info("register: %s; %s is version %s", record["reason"], reg.alias, holder)
    return record


def _rule(reg: RegistryCfg) -> dict[str, Any]:
    return reg.model_dump(include={"model_name", "alias", "metric", "mode", "min_delta", "floor"})


def _compare_register_move(client, reg, run_info: dict[str, Any], splits) -> dict[str, Any]:
    """Score candidate and champion on today's validation split, register, maybe move."""
    # Here, not at the top: rollback and housekeeping use this module without TensorFlow.
    from fmnist_mlops.evaluate.scoring import assess, load_network

    x, y = splits.x_val, splits.y_val
    candidate = assess(load_network(run_info["model_uri"]), x, y).metric(reg.metric)
    # A move by hand since the last command is recorded first.
    moves = history.reconcile(client, reg.model_name, reg.alias)
    champ = current_champion(client, reg.model_name, reg.alias)
    champion = None
    if champ is not None:
        champ_model = load_network(f"models:/{reg.model_name}/{champ.version}")
        champion = assess(champ_model, x, y).metric(reg.metric)
    decision = decide(candidate, champion, mode=reg.mode, min_delta=reg.min_delta, floor=reg.floor)
    version = mlflow.register_model(
        run_info["model_uri"], reg.model_name, tags={reg.metric: f"{candidate:.6f}"}
    )
    client.set_model_version_tag(reg.model_name, version.version, "run_id", run_info["run_id"])
    if decision.promote:
        if champ is not None:
            client.set_model_version_tag(
                reg.model_name, version.version, PREVIOUS_TAG, str(champ.version)
            )
        client.set_registered_model_alias(reg.model_name, reg.alias, version.version)
    # Read the alias back: what a server reports is the truth, not what we asked for.
    after = current_champion(client, reg.model_name, reg.alias)
    holder = int(after.version) if after is not None else None
    if decision.promote and holder != int(version.version):
        raise RegistryError(f"alias {reg.alias} moved to version {holder} concurrently")
    if decision.promote:
        history.append(
            client,
            reg.model_name,
            reg.alias,
            moves,
            kind="promote",
            from_version=int(champ.version) if champ is not None else None,
            to_version=int(version.version),
            run_id=run_info["run_id"],
            metric=reg.metric,
            candidate_score=candidate,
            champion_score=champion,
            reason=decision.reason,
        )
    return {
        **_rule(reg),
        "run_id": run_info["run_id"],
        "candidate_version": int(version.version),
        "candidate_score": candidate,
        "champion_version": int(champ.version) if champ is not None else None,
        "champion_score": champion,
        **asdict(decision),
        "champion_after": holder,
    }


def rollback(ctx: StageContext) -> dict[str, Any]:
    """Undo the alias' last move that is not itself undone (see :mod:`history`).

    Rolling back twice walks back through the real order of events: promotions, earlier
    rollbacks and moves by hand, as the champion's history records them.
    """
    reg = ctx.config.registry
    ctx.track()
    client = MlflowClient()
    name, alias = reg.model_name, reg.alias
    with registry_lock(name, reg.lock_url):
        moves = history.reconcile(client, name, alias)
        if not moves:
            raise RegistryError(f"{name} has no @{alias}: nothing to roll back")
        move = history.to_undo(moves)
        if move is None or move.from_version is None:
            first = move.to_version if move is not None else moves[0].to_version
            raise RegistryError(
                f"{name} version {first} was the first @{alias}: "
                f"there is no previous champion to roll back to"
            )
        target, holder = move.from_version, moves[-1].to_version
        try:
            target_run = client.get_model_version(name, str(target)).run_id
        except MlflowException:
            raise RegistryError(
                f"{name} version {target}, the champion before version "
                f"{holder}, was deleted: nothing to roll back to (set @{alias} on "
                f"another version in the MLflow UI)"
            ) from None
        client.set_registered_model_alias(name, alias, str(target))
        if holder is not None:
            client.set_model_version_tag(name, str(holder), "rolled_back", "true")
        done = history.append(
            client,
            name,
            alias,
            moves,
            kind="rollback",
            from_version=holder,
            to_version=target,
            run_id=target_run,
            undoes=move.n,
            reason=f"undoes move {move.n} ({move.kind} of version {move.to_version})",
        )
    log.info("rollback: @%s moved from version %s to %s", alias, holder, target)
    return {
        "model_name": name,
        "from_version": holder,
        "to_version": target,
        "move": done.n,
        "undoes": move.n,
    }
