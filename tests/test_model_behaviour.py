"""The default model, trained once on the full split by `dvc repro`: the README's promises and
behavioural checks (minimum functionality, invariance), in the spirit of Made-With-ML's
``tests/model/test_behavioral.py``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# Trains the default model on the real data (about a minute), once: one test process (xdist).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("default-model")]

# Measured on the default champion (seed 42, label smoothing 0.1, 13 epochs: test 0.9253) on the
# Intel Xeon with AMX it was trained on, less the gap two CPUs showed for the unsmoothed default
# (AMD EPYC with AVX-512 BF16 against this Xeon: overall 0.004, T-shirt 0.013, Sandal 0.006,
# Sneaker 0.045, Bag 0.007; bfloat16 follows the CPU's kernels, so the weights differ); the
# tests allow 2 points less. Agreement = same class for an image and its mirror. Clothes are
# left-right symmetric; shoes are not in Fashion-MNIST (they all point left), and the default
# model trains without flips: mirrored ankle boots, sandals and sneakers mostly change class.
FLIP_AGREEMENT = 0.7264  # 0.7304 on the Xeon
FLIP_AGREEMENT_PER_CLASS = {
    "T-shirt/top": 0.888,  # 0.901
    "Trouser": 0.987,
    "Pullover": 0.939,
    "Dress": 0.954,
    "Coat": 0.907,
    "Sandal": 0.341,  # 0.347
    "Shirt": 0.862,
    "Sneaker": 0.385,  # 0.430
    "Bag": 0.969,  # 0.976
    "Ankle boot": 0.001,
}
TOLERANCE = 0.02


@pytest.fixture(scope="session")
def default_project(build_once, real_data, project_copier, session_env):
    """A fresh copy of the project after `dvc repro` with the default config (real data),
    built once per session whichever test process asks first (only read afterwards)."""

    def build(folder: Path) -> None:
        project = project_copier(folder)
        dvc = str(Path(sys.executable).parent / "dvc")
        proc = subprocess.run(
            [dvc, "repro"],
            cwd=project,
            env=session_env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]

    return build_once("default-project", build)


@pytest.fixture(scope="session")
def champion(default_project):
    import mlflow

    uri = f"sqlite:///{default_project / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.pyfunc.load_model("models:/fashion-mnist-cnn@champion")


@pytest.fixture(scope="session")
def splits(default_project):
    from fmnist_mlops.data.splits import load_prepared

    return load_prepared(default_project / "data" / "prepared")


def predicted(champion, images: np.ndarray) -> np.ndarray:
    return np.array([r["index"] for r in champion.predict(images)])


def test_default_config_on_real_data_reaches_the_bar(default_project):
    """The README's promise: a champion with test accuracy >= 0.915 from the default config."""
    from mlflow.tracking import MlflowClient

    metrics = json.loads((default_project / "reports/metrics.json").read_text())
    assert metrics["test_images"] == 10000
    assert metrics["test_accuracy"] >= 0.915, metrics
    uri = f"sqlite:///{default_project / 'mlflow.db'}"
    champion = MlflowClient(uri, registry_uri=uri).get_model_version_by_alias(
        "fashion-mnist-cnn", "champion"
    )
    assert champion.run_id == metrics["run_id"]


def test_the_most_typical_test_images_of_every_class_are_classified_correctly(champion, splits):
    """Minimum functionality: per class, the 5 test images nearest its mean training image.

    At most one of them per class, and two of all 50, may be misread. Measured on the default
    network, seeds 42 / 1 / 2, with label smoothing: 1 / 0 / 1 misread (a coat read as a
    pullover, a sandal as a sneaker); without it: 0 / 2 / 1 (pullover <-> coat <-> shirt). Which
    borderline image falls on which side is the seed's luck; a class the model has not learned
    loses several of its most typical images, and fails here.
    """
    from fmnist_mlops.config.schema import CLASS_NAMES

    x_train = splits.x_train.reshape(len(splits.x_train), -1).astype(np.float64)
    x_test = splits.x_test.reshape(len(splits.x_test), -1).astype(np.float64)
    misread = []
    for c, name in enumerate(CLASS_NAMES):
        mean = x_train[splits.y_train == c].mean(axis=0)
        members = np.flatnonzero(splits.y_test == c)
        nearest = members[np.argsort(np.linalg.norm(x_test[members] - mean, axis=1))[:5]]
        got = predicted(champion, splits.x_test[nearest])
        wrong = [(int(i), CLASS_NAMES[g]) for i, g in zip(nearest, got, strict=True) if g != c]
        assert len(wrong) <= 1, f"{name}: images {nearest.tolist()} predicted {got.tolist()}"
        misread += [(name, *w) for w in wrong]
    assert len(misread) <= 2, f"misread (class, image, predicted): {misread}"


def test_mirrored_images_get_the_same_class(champion, splits):
    """Invariance: a mirrored image keeps its class as often as it did (clothes do; shoes no)."""
    from fmnist_mlops.config.schema import CLASS_NAMES

    plain = predicted(champion, splits.x_test)
    mirrored = predicted(champion, splits.x_test[:, :, ::-1])
    same = plain == mirrored
    assert same.mean() >= FLIP_AGREEMENT - TOLERANCE, f"overall {same.mean():.4f}"
    for c, name in enumerate(CLASS_NAMES):
        share = same[splits.y_test == c].mean()
        assert share >= FLIP_AGREEMENT_PER_CLASS[name] - TOLERANCE, f"{name} {share:.4f}"


def readme_example(readme: Path) -> tuple[str, dict]:
    """The README's curl command and the answer it shows."""
    text = readme.read_text()
    pattern = (
        r"```bash\n((?:IMG=[^\n]*\n)?curl -s http://127\.0\.0\.1:5001/invocations.*?)```"
        r"\n\n```json\n(.*?)```"
    )
    found = re.search(pattern, text, re.S)
    assert found, "README: the curl example and its JSON answer"
    return found.group(1), json.loads(found.group(2))


def test_the_readme_curl_example_gives_the_answer_it_shows(
    default_project, project_root, subprocess_env, free_tcp_port
):
    from fmnist_mlops.runtime.processes import running

    command, shown = readme_example(project_root / "README.md")
    bin_dir = Path(sys.executable).parent
    env = {**subprocess_env, "MLFLOW_TRACKING_URI": f"sqlite:///{default_project / 'mlflow.db'}"}
    cmd = [str(bin_dir / "mlflow"), "models", "serve", "-m", "models:/fashion-mnist-cnn@champion"]
    cmd += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(free_tcp_port)]
    url = f"http://127.0.0.1:{free_tcp_port}"
    with running(cmd, env, f"{url}/ping", default_project / "serve.log"):
        command = command.replace("http://127.0.0.1:5001", url)
        proc = subprocess.run(
            ["bash", "-c", command], env=env, capture_output=True, text=True, timeout=120
        )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)["predictions"][0]
    want = shown["predictions"][0]
    assert got["class"] == want["class"]
    assert [t["class"] for t in got["top_k"]] == [t["class"] for t in want["top_k"]]
    # The second decimal, as a distance: rounding both would split 0.0149 and 0.0151, and the
    # smoothed default's probabilities sit between 0 and 1, where such pairs occur.
    assert got["probabilities"] == pytest.approx(want["probabilities"], abs=0.01)
    for g, w in zip(got["top_k"], want["top_k"], strict=True):
        assert g["probability"] == pytest.approx(w["probability"], abs=0.01)
