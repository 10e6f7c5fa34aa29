"""``make report``: the champion's self-contained HTML report, from a smoke store."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pytest
from helpers import build_report, train
from omegaconf import open_dict
from PIL import Image

from fmnist_mlops.runtime.errors import RegistryError
from fmnist_mlops.runtime.paths import RUN_FILE
from fmnist_mlops.tracking.context import open_stage

pytestmark = pytest.mark.integration

SECTIONS = (
    "Metrics",
    "Training history",
    "Confusion matrix",
    "Per class (test set)",
    "Most confident mistakes",
    "What the network sees",
    "Recent runs",
)


def test_no_champion_is_one_clear_error_and_no_file(smoke_cfg, tmp_path):
    with pytest.raises(RegistryError, match="no fashion-mnist-cnn@champion"):
        build_report(open_stage(smoke_cfg), out=tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_report_is_self_contained_and_agrees_with_mlflow(champion, tmp_path):
    first = json.loads((Path(champion.paths.out) / RUN_FILE).read_text())
    later = champion.copy()
    with open_dict(later):
        later.paths.out = str(tmp_path / "later")
    train(open_stage(later))  # a later run that is not the champion, for the comparison table

    result = build_report(open_stage(champion), out=tmp_path / "champion.html")
    page = (tmp_path / "champion.html").read_text()
    assert result["run_id"] == first["run_id"]
    # The numbers are recomputed from the registered model and match what MLflow logged.
    assert result["test_accuracy"] == pytest.approx(result["logged_test_accuracy"], abs=1e-9)
    for section in SECTIONS:
        assert f"<h2>{section}</h2>" in page
    assert "differs from the logged one" not in page

    # Self-contained: every image is inline, nothing points elsewhere.
    assert not re.findall(r'(?:src|href)\s*=\s*"(?!data:)', page)
    assert "http://" not in page and "https://" not in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 5  # history, confusion, mistakes, first-layer filters, feature maps
    for data in images:
        with Image.open(io.BytesIO(base64.b64decode(data))) as img:
            assert img.format == "PNG" and img.width > 300

    per_class_rows = re.search(
        r"<h2>Per class \(test set\)</h2>\s*<table>(.*?)</table>", page, re.S
    )
    assert per_class_rows and per_class_rows.group(1).count("<tr>") == 11  # header + 10 classes
    recent = page.split("<h2>Recent runs</h2>")[1]
    assert recent.count('<tr class="champion">') == 1 and recent.count("<tr") == 3
