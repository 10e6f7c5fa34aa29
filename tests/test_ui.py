"""The MLflow UI in a real headless Chromium, on a store made by the smoke pipeline."""

from __future__ import annotations

import pytest
from helpers import free_port, load_script
from PIL import Image

pytestmark = pytest.mark.integration  # a real MLflow UI server and a real headless Chromium


def test_ui_shows_the_runs_metrics_and_the_champion(shared_champion, tmp_path):
    ui = load_script("tools/ui_check.py")
    store = shared_champion.mlflow.tracking_uri
    with ui.mlflow_ui(store, free_port(), tmp_path / "ui.log") as url:
        shots = ui.check_ui(url, store, shared_champion.registry.model_name, tmp_path / "shots")
    for path in shots.values():
        with Image.open(path) as img:
            assert img.format == "PNG" and img.width == 1400 and img.height > 600
            # A blank or error page is nearly one colour; a rendered page is not.
            assert len(img.convert("L").getcolors(65536)) > 50
