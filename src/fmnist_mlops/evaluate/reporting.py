"""``make report``: one self-contained HTML page about the registered champion.

Everything is recomputed from the registered model and the prepared test split (and checked
against what MLflow logged), figures are embedded as ``data:`` PNGs, and there are no external
links to scripts, styles or fonts: the file can be mailed or opened offline.
"""

from __future__ import annotations

import base64
import html
import logging
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np
from mlflow.tracking import MlflowClient

from fmnist_mlops.config.schema import CLASS_NAMES
from fmnist_mlops.evaluate.plots import (
    confusion_plot,
    feature_maps_plot,
    filters_plot,
    misclassified_grid,
)
from fmnist_mlops.evaluate.scoring import assess, load_network
from fmnist_mlops.runtime.errors import RegistryError
from fmnist_mlops.runtime.files import write_text
from fmnist_mlops.runtime.paths import resolve
from fmnist_mlops.tracking import store
from fmnist_mlops.tracking.context import StageContext
from fmnist_mlops.tracking.databases import hide_password
from fmnist_mlops.tracking.runs import RAW_DIGEST_TAG
from fmnist_mlops.train.history import EPOCH_METRICS, history_plot

log = logging.getLogger(__name__)

REPORT_FILE = "reports/champion.html"
RECENT_RUNS = 10
_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
tr.champion { background: #eef6ff; font-weight: 600; }
img { max-width: 100%; } .warn { color: #a40; font-weight: 600; } .muted { color: #777; }
"""


def _png(fig_fn, *args, **kwargs) -> str:
    """Render a figure function into a ``data:`` URI."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "figure.png"
        fig_fn(*args, path=path, **kwargs)
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _table(headers: list[str], rows: list[list[Any]], left: int = 1, classes=None) -> str:
    def cell(tag: str, i: int, value: Any) -> str:
        cls = ' class="l"' if i < left else ""
        if isinstance(value, float):
            value = f"{value:.4f}"
        return f"<{tag}{cls}>{html.escape(str(value))}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(headers))
    body = []
    for n, row in enumerate(rows):
        cls = f' class="{classes[n]}"' if classes and classes[n] else ""
        body.append(f"<tr{cls}>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _history(client: MlflowClient, run_id: str) -> dict[str, list[float]]:
    hist = {}
    for key in EPOCH_METRICS:
        points = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        hist[key] = [m.value for m in points]
    return hist


def _conv_layers(model: keras.Model) -> list[keras.layers.Layer]:
    return [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]


def _what_it_sees(model: keras.Model, image: np.ndarray, label: str) -> tuple[str, str]:
    convs = _conv_layers(model)
    if not convs:
        return "", ""
    kernel = convs[0].get_weights()[0]
    probe = keras.Model(model.inputs[0], [layer.output for layer in convs])
    maps = probe(image[None].astype("float32"), training=False)
    maps = maps if isinstance(maps, list | tuple) else [maps]
    # float32: bfloat16 maps (mixed precision) are not something matplotlib can draw.
    blocks = [
        (layer.name, np.asarray(m, dtype=np.float32)[0])
        for layer, m in zip(convs, maps, strict=True)
    ]
    return (
        _png(filters_plot, kernel),
        _png(feature_maps_plot, image, f"Feature maps of each conv block ({label})", blocks),
    )


def _recent_runs(client: MlflowClient, experiment_id: str, champion_run: str) -> str:
    runs = client.search_runs(
        [experiment_id],
        filter_string="tags.stage = 'train'",
        order_by=["attributes.start_time DESC"],
        max_results=RECENT_RUNS,
    )
    rows, classes = [], []
    for r in runs:
        p, m = r.data.params, r.data.metrics
        started = datetime.fromtimestamp(r.info.start_time / 1000, tz=UTC)
        rows.append(
            [
                r.info.run_name or "",
                r.info.run_id[:8],
                started.strftime("%Y-%m-%d %H:%M"),
                r.info.status,
                p.get("model.name", ""),
                p.get("model.filters", ""),
                p.get("train.lr", ""),
                p.get("train.batch_size", ""),
                int(m["epochs_trained"]) if "epochs_trained" in m else "",
                m.get("best_val_accuracy", m.get("val_accuracy", "")),
                m.get("test_accuracy", ""),
            ]
        )
        classes.append("champion" if r.info.run_id == champion_run else "")
    headers = ["run", "id", "started (UTC)", "status", "model", "filters", "lr", "batch"]
    headers += ["epochs", "val acc", "test acc"]
    return _table(headers, rows, left=6, classes=classes)


def build_report(ctx: StageContext, out: Path | None = None) -> dict[str, Any]:
    """Write the champion report and return where it went and the recomputed test metrics.

    Raises:
        RegistryError: when there is no ``registry.alias`` version of ``registry.model_name``.
    """
    config = ctx.config
    uri = ctx.tracking_uri
    store.connect(uri)  # no experiment is created: the report only reads
    client = MlflowClient()
    reg = config.registry
    version, run = _champion(client, reg, uri)
    prepared, splits = ctx.prepared, ctx.splits
    model = load_network(f"models:/{reg.model_name}@{reg.alias}")
    test = assess(model, splits.x_test, splits.y_test)
    logged = run.data.metrics
    heading = [
        f"<h1>{html.escape(reg.model_name)}@{html.escape(reg.alias)}</h1>",
        f'<p class="muted">Report written {datetime.now(tz=UTC):%Y-%m-%d %H:%M} UTC from '
        f"{html.escape(hide_password(uri))}; "
        f"test split: {html.escape(str(prepared))}.</p>",
        _table(["", ""], _summary_rows(reg, version, run), left=2),
    ]
    sections = heading + _result_sections(client, run, model, splits, test)
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(reg.model_name)}@{html.escape(reg.alias)} report</title>"
        f"<style>{_CSS}</style></head><body>\n" + "\n".join(sections) + "\n</body></html>\n"
    )
    target = out or resolve(config.paths.out or ".") / REPORT_FILE
    write_text(target, page)
    log.info("report: wrote %s (%d KB)", target, target.stat().st_size // 1024)
    return {
        "report": str(target),
        "version": str(version.version),
        "run_id": run.info.run_id,
        "test_accuracy": test.accuracy,
        "logged_test_accuracy": logged.get("test_accuracy"),
    }


def _champion(client: MlflowClient, reg: Any, uri: str):
    """The ``registry.alias`` version and its run, or one line saying why there is none."""
    try:
        version = client.get_model_version_by_alias(reg.model_name, reg.alias)
    except Exception:  # noqa: BLE001 - MLflow raises its generic exception for "no alias"
        raise RegistryError(
            f"no {reg.model_name}@{reg.alias} in {uri}: run `make repro` first"
        ) from None
    try:
        return version, client.get_run(version.run_id)
    except Exception:  # noqa: BLE001 - MLflow's generic exception for a missing run
        raise RegistryError(
            f"{reg.model_name}@{reg.alias} is version {version.version}, whose run "
            f"{version.run_id} is gone from {hide_password(uri)} (collected by "
            "`mlflow gc`?): the report needs its history; `make rollback` or promote another "
            "version"
        ) from None


def _summary_rows(reg: Any, version: Any, run: Any) -> list[list[str]]:
    p = run.data.params
    return [
        ["registered model", f"{reg.model_name} version {version.version} (@{reg.alias})"],
        ["MLflow run", f"{run.info.run_name} ({run.info.run_id})"],
        ["git commit", run.data.tags.get("git_commit", "?")],
        [
            "model",
            f"{p.get('model.name', '?')}: filters {p.get('model.filters', '?')}, "
            f"dense {p.get('model.dense_units', '?')}, dropout {p.get('model.dropout', '?')}",
        ],
        [
            "training",
            f"lr {p.get('train.lr', '?')}, batch {p.get('train.batch_size', '?')}, "
            f"seed {p.get('seed', '?')}",
        ],
    ]


def _result_sections(client, run, model, splits, test) -> list[str]:
    """Metrics (recomputed next to logged), history, confusion, per class, mistakes, filters."""
    logged = run.data.metrics
    best_epoch = int(logged["best_epoch"]) if "best_epoch" in logged else None
    metrics_rows = [
        ["test accuracy", test.accuracy, logged.get("test_accuracy", "")],
        ["test loss", test.loss, logged.get("test_loss", "")],
        ["best val accuracy", "", logged.get("best_val_accuracy", "")],
        [
            "best epoch / epochs trained",
            "",
            f"{best_epoch} / {int(logged.get('epochs_trained', 0))}",
        ],
        ["test images", len(splits.y_test), logged.get("test_images", "")],
    ]
    notes = []
    if not all(
        run.data.tags.get(f"{RAW_DIGEST_TAG}{k}") == v for k, v in splits.meta["sha256"].items()
    ):
        notes.append("The champion's run was trained on other raw files than this split's.")
    if "test_accuracy" in logged and abs(logged["test_accuracy"] - test.accuracy) > 1e-6:
        notes.append(
            "Recomputed test accuracy differs from the logged one: the prepared split is not "
            "the one this run was evaluated on (check data.* settings)."
        )
    per_class_rows = [
        [name, c["precision"], c["recall"], c["f1"], c["support"]]
        for name, c in test.classes.items()
    ]
    right = splits.y_test == test.pred
    sample = int(np.flatnonzero(right)[0]) if right.any() else 0
    filters_png, maps_png = _what_it_sees(
        model, splits.x_test[sample], f"test image #{sample}, {CLASS_NAMES[splits.y_test[sample]]}"
    )
    history = _history(client, run.info.run_id)
    mistakes = _png(
        misclassified_grid, splits.x_test, splits.y_test, test.pred, test.top, CLASS_NAMES
    )
    return [
        "<h2>Metrics</h2>",
        "".join(f'<p class="warn">{html.escape(n)}</p>' for n in notes),
        _table(["", "recomputed now", "logged in MLflow"], metrics_rows),
        "<h2>Training history</h2>",
        f'<img alt="training history" src="{_png(history_plot, history, best_epoch=best_epoch)}">',
        "<h2>Confusion matrix</h2>",
        f'<img alt="confusion matrix" src="{_png(confusion_plot, test.confusion, CLASS_NAMES)}">',
        "<h2>Per class (test set)</h2>",
        _table(["class", "precision", "recall", "F1", "support"], per_class_rows),
        "<h2>Most confident mistakes</h2>",
        f'<img alt="misclassified" src="{mistakes}">',
        "<h2>What the network sees</h2>",
        f'<img alt="first-layer filters" src="{filters_png}">' if filters_png else "",
        f'<img alt="feature maps" src="{maps_png}">' if maps_png else "",
        "<h2>Recent runs</h2>",
        _recent_runs(client, run.info.experiment_id, run.info.run_id),
    ]
