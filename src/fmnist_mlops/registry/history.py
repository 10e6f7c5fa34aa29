"""The champion's history: every move of the alias, kept as tags on the registered model.

MLflow keeps no alias history (mlflow#2169). Each move is one tag on the registered model,
``alias_history.<alias>.<n>``, holding a JSON record. Tags on the registered model, rather than
runs in an experiment, because they live and die with the model they describe: ``make
clean-runs`` and ``mlflow gc`` never touch them, they need no experiment that housekeeping must
know to spare, they read back in one call on SQLite, PostgreSQL and a tracking server, and one
move is one atomic write. A tag value holds 5,000 characters in the SQL store; a record is a
few hundred, and its free text is cut to fit.

Moves are appended under the registry lock (:func:`~fmnist_mlops.registry.rule.registry_lock`),
so their numbers are the real order of events.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fmnist_mlops.registry.rule import PREVIOUS_TAG, current_champion

# MLflow's limit on a tag value in the SQL store; the record is cut below it.
_MAX_TAG = 5000
_MAX_TEXT = 1000

KINDS = ("promote", "rollback", "manual", "adopted")


@dataclass(frozen=True)
class Move:
    """One move of the alias (``to_version`` None: the alias was removed).

    ``kind`` is ``promote`` (the promotion rule), ``rollback`` (undoes move ``undoes``),
    ``manual`` (set by hand, noticed by the next command that moves the alias) or ``adopted``
    (the champion found when the history began; ``from_version`` is its
    ``previous_champion`` tag).
    """

    n: int
    at: str
    kind: str
    from_version: int | None
    to_version: int | None
    command: str
    run_id: str | None = None
    metric: str | None = None
    candidate_score: float | None = None
    champion_score: float | None = None
    reason: str = ""
    undoes: int | None = None


def _prefix(alias: str) -> str:
    return f"alias_history.{alias}."


def read(client: MlflowClient, name: str, alias: str) -> list[Move]:
    """Every recorded move of ``alias`` on model ``name``, oldest first."""
    try:
        tags = client.get_registered_model(name).tags
    except MlflowException:  # no such model yet: no history
        return []
    prefix = _prefix(alias)
    moves = [Move(**json.loads(v)) for k, v in tags.items() if k.startswith(prefix)]
    return sorted(moves, key=lambda m: m.n)


def command_line() -> str:
    """The command that runs now, as a user would type it (cut to fit a record)."""
    argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else ["python"]
    return " ".join(argv)[:_MAX_TEXT]


def append(client: MlflowClient, name: str, alias: str, past: list[Move], **fields: Any) -> Move:
    """Record a move after ``past`` (the history as read). Call it holding the registry lock."""
    fields.setdefault("command", command_line())
    fields["reason"] = str(fields.get("reason", ""))[:_MAX_TEXT]
    move = Move(
        n=(past[-1].n + 1) if past else 1,
        at=datetime.now(UTC).isoformat(timespec="seconds"),
        **fields,
    )
    value = json.dumps(asdict(move))
    assert len(value) <= _MAX_TAG, "record fields are cut to fit a tag"
    client.set_registered_model_tag(name, f"{_prefix(alias)}{move.n:06d}", value)
    return move


def reconcile(client: MlflowClient, name: str, alias: str) -> list[Move]:
    """The history, first completed with a move nobody recorded (the alias set by hand).

    A champion found where the history says another version (or none) holds the alias was
    moved outside this project, e.g. in the MLflow UI: that move is appended as ``manual``.
    A champion found before any history existed is appended as ``adopted``, coming from its
    ``previous_champion`` tag, so a registry from before the history still rolls back.
    """
    moves = read(client, name, alias)
    champ = current_champion(client, name, alias)
    holder = int(champ.version) if champ is not None else None
    recorded = moves[-1].to_version if moves else None
    if holder == recorded:
        return moves
    if not moves:
        previous = champ.tags.get(PREVIOUS_TAG)
        move = append(
            client,
            name,
            alias,
            moves,
            kind="adopted",
            from_version=int(previous) if previous else None,
            to_version=holder,
            reason="champion when the history began",
        )
    else:
        move = append(
            client,
            name,
            alias,
            moves,
            kind="manual",
            from_version=recorded,
            to_version=holder,
            reason=f"@{alias} was moved outside this project (e.g. in the MLflow UI); "
            f"noticed by {command_line()}",
        )
    return [*moves, move]


def to_undo(moves: list[Move]) -> Move | None:
    """The move a rollback undoes: the latest one that is neither a rollback nor undone."""
    undone = {m.undoes for m in moves if m.undoes is not None}
    for move in reversed(moves):
        if move.kind != "rollback" and move.n not in undone:
            return move
    return None


def rollback_targets(moves: list[Move]) -> list[int]:
    """The versions successive rollbacks would move the alias to, in that order."""
    targets, undone = [], {m.undoes for m in moves if m.undoes is not None}
    for move in reversed(moves):
        if move.kind == "rollback" or move.n in undone:
            continue
        if move.from_version is None:
            break  # the first champion: nothing before it
        targets.append(move.from_version)
    return targets


def undone_by(moves: list[Move]) -> dict[int, int]:
    """{move number: number of the rollback that undid it}."""
    return {m.undoes: m.n for m in moves if m.undoes is not None}


def table(moves: list[Move], name: str, alias: str) -> str:
    """The history as a plain-text table, oldest move first."""
    if not moves:
        return f"{name}@{alias}: no moves recorded"
    undone = undone_by(moves)

    def version(v: int | None) -> str:
        return "-" if v is None else f"v{v}"

    def scores(m: Move) -> str:
        if m.candidate_score is None:
            return ""
        champion = "none" if m.champion_score is None else f"{m.champion_score:.4f}"
        return f"{m.metric} {m.candidate_score:.4f} vs {champion}"

    rows = [("#", "when (UTC)", "kind", "from", "to", "scores", "run", "undone by", "by", "reason")]
    for m in moves:
        rows.append(
            (
                str(m.n),
                m.at.replace("+00:00", ""),
                m.kind,
                version(m.from_version),
                version(m.to_version),
                scores(m),
                (m.run_id or "")[:8],
                f"#{undone[m.n]}" if m.n in undone else "",
                m.command if len(m.command) <= 40 else m.command[:39] + "…",
                m.reason,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=False)) + "  " + r[-1]
        for r in rows
    ]
    holder = moves[-1].to_version
    count = f"{len(moves)} move{'' if len(moves) == 1 else 's'}"
    return "\n".join([f"{name}@{alias}: {count}, now {version(holder)}", *lines])


def champion_history(ctx: Any) -> None:
    """``make champion-history``: print the alias' moves as a table (nothing is written)."""
    reg = ctx.config.registry
    ctx.track()
    client = MlflowClient()
    moves = read(client, reg.model_name, reg.alias)
    champ = current_champion(client, reg.model_name, reg.alias)
    print(table(moves, reg.model_name, reg.alias))
    holder = int(champ.version) if champ is not None else None
    if moves and holder != moves[-1].to_version:
        print(
            f"note: @{reg.alias} is on {'no version' if holder is None else f'v{holder}'}, "
            "moved outside this project; the next promotion or rollback records it"
        )
