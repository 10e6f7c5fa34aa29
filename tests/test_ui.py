"""The MLflow UI in a real headless Chromium, on a store made by the smoke pipeline."""

from __future__ import annotations

import sys

from helpers import ROOT, free_port
from PIL import Image

from fmnist_mlops.context import open_stage
from fmnist_mlops.evaluation import evaluate
from fmnist_mlops.promotion import promote
from fmnist_mlops.training import train

sys.path.insert(0, str(ROOT / "tools"))
from ui_check import check_ui, mlflow_ui  # noqa: E402


def test_ui_shows_the_runs_metrics_and_the_champion(smoke_cfg, tmp_path):
    train(open_stage(smoke_cfg))
    evaluate(open_stage(smoke_cfg))
    assert promote(open_stage(smoke_cfg))["promote"]
    store = smoke_cfg.mlflow.tracking_uri
    with mlflow_ui(store, free_port(), tmp_path / "ui.log") as url:
        shots = check_ui(url, store, smoke_cfg.registry.model_name, tmp_path / "shots")
    for path in shots.values():
        with Image.open(path) as img:
            assert img.format == "PNG" and img.width == 1400 and img.height > 600
            # A blank or error page is nearly one colour; a rendered page is not.
            assert len(img.convert("L").getcolors(65536)) > 50
