"""A multi-worker training's handshakes: join the cluster, agree on settings, share the backup.

Every worker runs them before it trains: the chief through :mod:`fmnist_mlops.train.training`
like a single process, the others as its peers, writing nothing shared.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from fmnist_mlops.config.schema import Config
from fmnist_mlops.tracking.logged_params import flatten
from fmnist_mlops.train import backup

log = logging.getLogger(__name__)


def join_cluster(config: Config, cfg: DictConfig) -> None:
    """Multi-worker: wait until every worker is up, before anything that may fail alone.

    From here on, a chief that stops (a refused ``paths.out``, a store it cannot open) ends
    the others within the collective timeout instead of leaving them waiting to connect.
    Then the workers compare their settings: started with different ones, every worker stops
    in one line naming them (exit 2), before the chief opens a run.
    """
    if config.train.distribute != "multi_worker":
        return
    import json

    from fmnist_mlops.runtime.errors import ConfigError
    from fmnist_mlops.train.distribute import gather_text, make_strategy, peers_guarded

    with peers_guarded():  # a peer that stops while the others join is a lost peer too
        strategy = make_strategy("multi_worker")  # made once per process; fit reuses it
    text = json.dumps(flatten(backup.training_settings(cfg)), default=str)
    mine = json.loads(text)
    every = [json.loads(t) for t in gather_text(strategy, text)]
    differ = sorted(
        {k for theirs in every for k in {*mine, *theirs} if theirs.get(k) != mine.get(k)}
    )
    if differ:
        shown = "; ".join(
            f"{k}: " + " / ".join(f"worker {i} {w.get(k, '(unset)')}" for i, w in enumerate(every))
            for k in differ[:5]
        )
        more = f" (and {len(differ) - 5} more)" if len(differ) > 5 else ""
        raise ConfigError(
            f"the {len(every)} workers were started with different settings: {shown}{more}: "
            "start every worker with the same overrides (only TF_CONFIG differs)"
        )


def share_backup(config: Config, restored: backup.ResumeState | None) -> str | None:
    """Multi-worker: tell every worker which backup the chief resumes (None: a new run)."""
    if config.train.distribute != "multi_worker":
        return None
    from fmnist_mlops.train.distribute import broadcast_text, make_strategy

    strategy = make_strategy("multi_worker")
    return broadcast_text(strategy, str(restored.folder) if restored is not None else None)
