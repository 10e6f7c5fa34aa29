"""The registry rule and its lock: when a candidate beats the champion, and one mover at a time.

Core, not orchestration: the ``register`` and ``rollback`` stages (:mod:`promotion`) use it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fmnist_mlops.runtime.errors import RegistryError
from fmnist_mlops.runtime.files import file_lock
from fmnist_mlops.runtime.paths import registry_lock_file

PREVIOUS_TAG = "previous_champion"


@dataclass(frozen=True)
class Decision:
    """Whether the candidate becomes champion, and why."""

    promote: bool
    reason: str


def decide(
    candidate: float, champion: float | None, *, mode: str, min_delta: float, floor: float
) -> Decision:
    """Apply the promotion rule to two scores of ``registry.metric``.

    Promote when the candidate reaches ``floor`` and beats the champion by more than
    ``min_delta`` (``mode`` "max": higher is better; "min": lower is better). With no
    champion, reaching the floor is enough.
    """
    better = (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)
    reaches_floor = candidate >= floor if mode == "max" else candidate <= floor
    if not reaches_floor:
        return Decision(False, f"candidate {candidate:.6f} does not reach floor {floor}")
    if champion is None:
        return Decision(True, "no champion yet and candidate reaches the floor")
    target = champion + min_delta if mode == "max" else champion - min_delta
    if better(candidate, target):
        return Decision(
            True, f"candidate {candidate:.6f} beats champion {champion:.6f} by > {min_delta}"
        )
    return Decision(
        False, f"candidate {candidate:.6f} does not beat champion {champion:.6f} by > {min_delta}"
    )


@contextlib.contextmanager
def registry_lock(
    name: str, lock_url: str | None = None, setting: str = "registry.lock_url"
) -> Iterator[None]:
    """Serialise compare-and-move of ``@alias`` for model ``name``.

    Without ``lock_url``: an exclusive file lock next to the store (processes of one machine).
    With a ``postgresql://`` URL: a session-level ``pg_advisory_lock`` on that database, so
    machines sharing one tracking server serialise too.
    """
    if lock_url:
        yield from _pg_lock(name, lock_url, setting)
        return
    with file_lock(registry_lock_file(name)):
        yield


def _pg_lock(name: str, url: str, setting: str) -> Iterator[None]:
    import sqlalchemy

    from fmnist_mlops.tracking.databases import engine as make_engine
    from fmnist_mlops.tracking.databases import first_line, hide_password

    engine = make_engine(url)
    try:
        conn = engine.connect()
    except sqlalchemy.exc.OperationalError as exc:
        engine.dispose()
        raise RegistryError(
            f"{setting}: cannot reach {hide_password(url)} ({first_line(exc)})"
        ) from None
    try:
        key = sqlalchemy.text("select hashtextextended(:name, 0)")
        lock_id = conn.execute(key, {"name": f"fmnist-registry:{name}"}).scalar_one()
        conn.execute(sqlalchemy.text("select pg_advisory_lock(:id)"), {"id": lock_id})
        try:
            yield
        finally:
            conn.execute(sqlalchemy.text("select pg_advisory_unlock(:id)"), {"id": lock_id})
    finally:
        conn.close()
        engine.dispose()


def current_champion(client: MlflowClient, name: str, alias: str):
    """Return the model version holding ``alias``, or ``None``."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
