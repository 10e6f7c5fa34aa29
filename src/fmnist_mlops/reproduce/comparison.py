"""Recorded against rebuilt: the side-by-side table and the verdict. Pure: no I/O.

**exact**: the same weights (digest) and every epoch's metrics equal. **close**: every epoch
both have, and the test accuracy, within the tolerance. **differs**: otherwise, with the first
epoch (or figure) that is off and by how much.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fmnist_mlops.config.commands import ToleranceCfg
from fmnist_mlops.train.history import EPOCH_METRICS as EPOCH_KEYS

# What each side's run logged at its end and the table shows (besides epochs and weights).
SUMMARY_METRICS = ("test_accuracy", "test_loss", "best_epoch", "epochs_trained", "fit_seconds")


@dataclass
class Comparison:
    """The verdict, why, and the rows of the table."""

    verdict: str
    why: str
    epochs: list[tuple[int, dict[str, float | None], dict[str, float | None]]]
    summary: list[tuple[str, Any, Any, str]] = field(default_factory=list)


def _off(key: str, a: float, b: float, tol: ToleranceCfg) -> float | None:
    """How far ``b`` is from ``a`` beyond the tolerance for ``key`` (None: within it)."""
    if key.endswith("loss"):
        scale = max(abs(a), 1e-12)
        return None if abs(a - b) / scale <= tol.loss else abs(a - b) / scale
    return None if abs(a - b) <= tol.accuracy else abs(a - b)


def compare(recorded: dict[str, Any], rebuilt: dict[str, Any], tol: ToleranceCfg) -> Comparison:
    """Judge a rebuild.

    Args:
        recorded: ``epochs`` ({metric: [value per epoch]}), ``test_accuracy``,
            ``test_loss``, ``best_epoch``, ``epochs_trained``, ``weights_sha256``,
            ``fit_seconds`` (any may be None when not recorded).
        rebuilt: The same fields of the rebuild.
        tol: ``reproduce.tolerance``.
    """
    rec_epochs, new_epochs = recorded["epochs"], rebuilt["epochs"]
    n_rec = max((len(v) for v in rec_epochs.values()), default=0)
    n_new = max((len(v) for v in new_epochs.values()), default=0)
    rows = []
    equal = n_rec == n_new and n_rec > 0
    first_off: tuple[int, str, float, float, float] | None = None
    for epoch in range(max(n_rec, n_new)):
        a = {k: _at(rec_epochs, k, epoch) for k in EPOCH_KEYS}
        b = {k: _at(new_epochs, k, epoch) for k in EPOCH_KEYS}
        rows.append((epoch, a, b))
        for key in EPOCH_KEYS:
            if a[key] is None or b[key] is None:
                continue
            equal = equal and a[key] == b[key]
            off = _off(key, a[key], b[key], tol)
            if off is not None and first_off is None:
                first_off = (epoch, key, a[key], b[key], off)
    same_weights = bool(recorded.get("weights_sha256")) and (
        recorded.get("weights_sha256") == rebuilt.get("weights_sha256")
    )
    test_off = None
    if recorded.get("test_accuracy") is not None and rebuilt.get("test_accuracy") is not None:
        test_off = _off("test_accuracy", recorded["test_accuracy"], rebuilt["test_accuracy"], tol)
    summary = [
        (key, recorded.get(key), rebuilt.get(key), _mark(recorded.get(key), rebuilt.get(key)))
        for key in ("test_accuracy", "test_loss", "weights_sha256")
    ]
    for key in ("best_epoch", "epochs_trained"):  # logged as float metrics, shown as counts
        a, b = (None if v.get(key) is None else int(v[key]) for v in (recorded, rebuilt))
        summary.insert(0, (key, a, b, _mark(a, b)))
    summary.append(("fit_seconds", recorded.get("fit_seconds"), rebuilt.get("fit_seconds"), "cost"))
    if same_weights and equal:
        return Comparison("exact", "same weights, every epoch's metrics equal", rows, summary)
    if first_off is not None:
        epoch, key, a, b, off = first_off
        how = f"{off:.2%} relative" if key.endswith("loss") else f"{off:.4f}"
        why = f"first diverges at epoch {epoch}: {key} {a:.4f} recorded, {b:.4f} rebuilt ({how})"
        return Comparison("differs", why, rows, summary)
    if test_off is not None:
        why = (
            f"test_accuracy {recorded['test_accuracy']:.4f} recorded, "
            f"{rebuilt['test_accuracy']:.4f} rebuilt ({test_off:.4f})"
        )
        return Comparison("differs", why, rows, summary)
    if n_rec == 0:
        return Comparison("differs", "the version recorded no per-epoch metrics", rows, summary)
    reasons = []
    if not same_weights:
        reasons.append("other weights")
    if n_rec != n_new:
        reasons.append(f"{n_rec} epochs recorded, {n_new} rebuilt")
    within = f"accuracy within {tol.accuracy}, loss within {tol.loss:.0%}"
    return Comparison(
        "close", f"{', '.join(reasons) or 'metrics not bit-equal'}; {within}", rows, summary
    )


def _at(epochs: dict[str, list[float]], key: str, epoch: int) -> float | None:
    values = epochs.get(key) or []
    return values[epoch] if epoch < len(values) else None


def _mark(a: Any, b: Any) -> str:
    if a is None or b is None:
        return "not recorded" if a is None else "not rebuilt"
    if isinstance(a, float) and isinstance(b, float) and a != b:
        return f"{b - a:+.4g}"
    return "same" if a == b else "differs"


def table(comparison: Comparison, context: list[tuple[str, str, str]]) -> str:
    """The comparison as plain text: context rows, every epoch, the summary, the verdict."""
    lines = []
    width = max((len(r[0]) for r in context), default=0)
    for name, recorded, rebuilt in context:
        lines.append(f"{name.ljust(width)}  recorded {recorded}  |  rebuilt {rebuilt}")
    lines.append("")
    head = "epoch  " + "  ".join(f"{k:>23}" for k in EPOCH_KEYS)
    lines += [head, "       " + "  ".join(f"{'recorded / rebuilt':>23}" for _ in EPOCH_KEYS)]
    for epoch, a, b in comparison.epochs:
        cells = []
        for key in EPOCH_KEYS:
            cells.append(
                f"{_num(a[key])} {'=' if a[key] == b[key] else '/'} {_num(b[key])}".rjust(23)
            )
        lines.append(f"{epoch:>5}  " + "  ".join(cells))
    lines.append("")
    for name, recorded, rebuilt, mark in comparison.summary:
        lines.append(f"{name:<15} {_fmt(recorded):>20}  {_fmt(rebuilt):>20}  {mark}")
    lines += ["", f"verdict: {comparison.verdict.upper()} ({comparison.why})"]
    return "\n".join(lines)


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.6f}"


def _fmt(v: Any) -> str:
    if v is None:
        return "not recorded"
    if isinstance(v, float):
        return f"{v:.6f}" if abs(v) < 100 else f"{v:.1f}"
    text = str(v)
    return text if len(text) <= 20 else text[:12] + "…" + text[-6:]
