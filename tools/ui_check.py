"""Open the MLflow UI in a real headless Chromium, check what a user sees, save screenshots.

Checks the champion's run page lists its logged metrics with the logged values, the
registered model page shows ``@ champion`` on the champion's version, and MLflow 3's page of
the logged model shows the restored epoch's validation and the test scores. Used by the browser test
(on a smoke store) and by ``make screenshots`` (on the project store, for ``docs/``).

Needs Debian's ``chromium`` and ``chromium-driver`` (no browser download) and Selenium.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Without the background-networking flags Chromium keeps calling Google's hosts, which this
# offline machine refuses, many at a time.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
)
METRICS_SHOWN = ("test_accuracy", "val_accuracy", "best_epoch")


@contextmanager
def mlflow_ui(store_uri: str, port: int, log_path: Path, timeout: float = 120) -> Iterator[str]:
    """Run a lean ``mlflow ui`` (1 worker, no job runner) on 127.0.0.1 until the block ends."""
    from fmnist_mlops.runtime.processes import running

    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [mlflow_bin, "ui", "--backend-store-uri", store_uri, "--workers", "1"]
    cmd += ["-h", "127.0.0.1", "-p", str(port)]
    url = f"http://127.0.0.1:{port}"
    with running(cmd, env, f"{url}/health", log_path, timeout):
        yield url


@contextmanager
def chromium() -> Iterator:
    """A headless Debian Chromium driven through the system chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            raise RuntimeError(f"{path} missing: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    with tempfile.TemporaryDirectory(prefix="fmnist-chromium-") as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def _wait_text(driver, predicate, what: str, timeout: float = 60) -> str:
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    while True:
        text = driver.find_element(By.TAG_NAME, "body").text
        if predicate(text):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not shown at {driver.current_url}:\n{text[:1500]}")
        time.sleep(0.5)


def _close_assistant(driver) -> None:
    """Fold MLflow's assistant side panel away so the screenshot shows the page."""
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.XPATH, "//button[@aria-label='Close']"):
        if button.is_displayed():
            button.click()
            time.sleep(0.5)


def _shown_value(text: str, key: str) -> float | None:
    lines = text.splitlines()
    for i, line in enumerate(lines[:-1]):
        if line.strip() == key:
            try:
                return float(lines[i + 1])
            except ValueError:
                return None
    return None


def check_ui(
    url: str, store_uri: str, model_name: str, out_dir: Path, alias: str = "champion"
) -> dict[str, Path]:
    """Check the champion's run and model pages in Chromium; save screenshots in ``out_dir``.

    Raises:
        AssertionError: naming what the page failed to show.
    """
    from mlflow.tracking import MlflowClient
    from selenium.webdriver.common.by import By

    client = MlflowClient(store_uri, registry_uri=store_uri)
    version = client.get_model_version_by_alias(model_name, alias)
    run = client.get_run(version.run_id)
    expected = {k: run.data.metrics[k] for k in METRICS_SHOWN if k in run.data.metrics}
    assert expected, f"run {run.info.run_id} has none of {METRICS_SHOWN}"
    out_dir.mkdir(parents=True, exist_ok=True)
    shots = {}
    with chromium() as driver:
        driver.get(f"{url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}")
        text = _wait_text(driver, lambda t: all(k in t for k in expected), "the run's metrics")
        for key, value in expected.items():
            shown = _shown_value(text, key)
            assert shown is not None and abs(shown - value) < 1e-6, (
                f"run page shows {key}={shown}, MLflow holds {value}"
            )
        _close_assistant(driver)
        shots["run"] = out_dir / "ui-run.png"
        driver.save_screenshot(str(shots["run"]))

        driver.get(f"{url}/#/models/{model_name}")
        _wait_text(driver, lambda t: f"@ {alias}" in t, f"the @{alias} alias")
        rows = [r.text for r in driver.find_elements(By.XPATH, "//*[@role='row'] | //tr")]
        marked = [r for r in rows if f"@ {alias}" in r]
        assert len(marked) == 1 and marked[0].startswith(f"Version {version.version}\n"), (
            f"@{alias} should be on version {version.version}; rows: {rows}"
        )
        _close_assistant(driver)
        shots["model"] = out_dir / "ui-model.png"
        driver.save_screenshot(str(shots["model"]))

        # MLflow 3's page of the logged model behind the champion: the restored epoch's
        # numbers and the test scores, not the first epoch's.
        model_id = version.source.removeprefix("models:/")
        linked = {m.key: m.value for m in client.get_logged_model(model_id).metrics or []}
        wanted = {k: linked[k] for k in ("val_accuracy", "test_accuracy") if k in linked}
        assert len(wanted) == 2, f"logged model {model_id} links {sorted(linked)}"
        driver.get(f"{url}/#/experiments/{run.info.experiment_id}/models/{model_id}")
        text = _wait_text(driver, lambda t: all(k in t for k in wanted), "the model's metrics")
        for key, value in wanted.items():
            assert f"{value:.4f}"[:5] in text or str(round(value, 4))[:5] in text, (
                f"logged model page does not show {key}={value:.4f}"
            )
        _close_assistant(driver)
        shots["logged_model"] = out_dir / "ui-logged-model.png"
        driver.save_screenshot(str(shots["logged_model"]))
    return shots


def render_offline(html: Path, timeout: float = 60) -> dict:
    """Open a local HTML file in Chromium; report vega charts drawn and resources fetched.

    Returns:
        ``{"charts": <vega views drawn>, "embeds": <vegaEmbed calls>, "resources": [urls]}``.
    """
    from selenium.webdriver.common.by import By

    with chromium() as driver:
        driver.get(html.resolve().as_uri())
        embeds = html.read_text().count("vegaEmbed('#")
        deadline = time.monotonic() + timeout
        while True:
            drawn = driver.find_elements(
                By.CSS_SELECTOR, ".vega-embed canvas, .vega-embed svg.marks"
            )
            if len(drawn) >= embeds or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        resources = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
    return {"charts": len(drawn), "embeds": embeds, "resources": resources}


def main(argv: list[str] | None = None) -> int:
    """Check the project's store in the UI and write ``docs/ui-*.png``."""
    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=f"sqlite:///{root / 'mlflow.db'}")
    parser.add_argument("--model-name", default=None, help="default: registry.model_name of conf/")
    parser.add_argument("--out", type=Path, default=root / "docs")
    parser.add_argument("--port", type=int, default=5099)
    args = parser.parse_args(argv)
    if args.model_name is None:
        from fmnist_mlops.config.compose import compose

        args.model_name = compose().registry.model_name
    with (
        tempfile.TemporaryDirectory() as tmp,
        mlflow_ui(args.store, args.port, Path(tmp) / "ui.log") as url,
    ):
        shots = check_ui(url, args.store, args.model_name, args.out)
    for name, path in shots.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
