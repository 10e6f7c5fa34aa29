"""Every stage sets up once: the config validated, the split read, the store opened."""

from __future__ import annotations

from collections import Counter

import pytest
from helpers import build_report, evaluate_and_promote, train
from omegaconf import open_dict

from fmnist_mlops.registry.promotion import promote, rollback
from fmnist_mlops.runtime.errors import RegistryError
from fmnist_mlops.tracking import context, store
from fmnist_mlops.tracking.context import open_stage

pytestmark = pytest.mark.integration


@pytest.fixture
def setup_calls(monkeypatch) -> Counter:
    """Counts of the three setup steps, however a stage reaches them."""
    calls: Counter = Counter()

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(context, "validate", counting("validate", context.validate))
    monkeypatch.setattr(context, "stage_split", counting("split", context.stage_split))
    monkeypatch.setattr(store, "setup", counting("store", store.setup))
    return calls


def test_each_stage_reads_the_split_and_opens_the_store_once(smoke_cfg, setup_calls, tmp_path):
    once = {"validate": 1, "split": 1, "store": 1}

    def stage(fn, cfg, *args, **kwargs):
        setup_calls.clear()
        return fn(open_stage(cfg), *args, **kwargs)

    result = stage(train, smoke_cfg)
    assert setup_calls == once, "train"

    evaluated = stage(evaluate_and_promote, smoke_cfg)  # evaluate, then the promotion rule
    assert evaluated["promotion"]["promote"]
    assert setup_calls == once, "evaluate"

    assert stage(promote, smoke_cfg)["candidate_version"] == 1  # registered already
    assert setup_calls == once, "register"

    by_run = smoke_cfg.copy()
    with open_dict(by_run):
        by_run.paths.out = None
        by_run.run_id = result["run_id"]
    stage(evaluate_and_promote, by_run)
    assert setup_calls == once, "evaluate run_id=..."

    stage(build_report, smoke_cfg, out=tmp_path / "report.html")
    assert setup_calls == {"validate": 1, "split": 1}, "report (reads the store, creates nothing)"

    with pytest.raises(RegistryError, match="no previous champion"):
        stage(rollback, smoke_cfg)
    assert setup_calls == {"validate": 1, "store": 1}, "rollback (no split)"
