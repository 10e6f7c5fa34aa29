"""The Optuna study of ``make tune``: storage, opening, sampling, requeueing.

Where the study lives, opening it with its pruner and sampler, a trial's overrides sampled from
``tune.space``, and interrupted trials put back in the queue.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import optuna

from fmnist_mlops.config.commands import TuneCfg
from fmnist_mlops.config.schema import RegistryCfg
from fmnist_mlops.runtime.errors import ConfigError
from fmnist_mlops.runtime.paths import sqlite_dir, store_root
from fmnist_mlops.tracking.databases import first_line, hide_password, sqlalchemy_url

log = logging.getLogger(__name__)

PARENT_ATTR = "mlflow_parent_run_id"


# A trial a signal interrupted (its backup resumes it); the study's list of those queued again.
INTERRUPTED_ATTR = "interrupted"


REQUEUED_ATTR = "requeued_trials"


FINISHED_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def storage_url(tune_cfg: TuneCfg, tracking_uri: str) -> str:
    """``tune.storage``, or ``sqlite:///<folder of mlflow.db>/optuna.db``."""
    if tune_cfg.storage:
        return sqlalchemy_url(str(tune_cfg.storage))
    folder = sqlite_dir(tracking_uri) or store_root()
    return f"sqlite:///{folder / 'optuna.db'}"


def override_value(value: Any) -> str:
    """A sampled value as Hydra override text (lists compactly, as on a command line)."""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value).replace(" ", "")


def sample(trial: optuna.Trial, space: Any) -> list[str]:
    """Draw one point of ``tune.space``; return it as Hydra overrides, in the space's order."""
    overrides = []
    for key, spec in space.items():
        if spec["type"] == "categorical":
            # Optuna stores str/int/float/bool; lists (e.g. filters) travel as override text.
            choices = [
                c if isinstance(c, bool | int | float | str) else override_value(c)
                for c in spec["choices"]
            ]
            value = trial.suggest_categorical(key, choices)
        elif spec["type"] == "float":
            log = bool(spec.get("log"))
            value = trial.suggest_float(key, spec["low"], spec["high"], log=log)
        else:
            value = trial.suggest_int(key, spec["low"], spec["high"], log=bool(spec.get("log")))
        overrides.append(f"{key}={override_value(value)}")
    return overrides


def open_study(tune_cfg: TuneCfg, reg: RegistryCfg, url: str) -> optuna.Study:
    """Open (or create) the study in its storage, its sampler reseeded past the trials made."""
    direction = "maximize" if reg.mode == "max" else "minimize"
    pruner = optuna.pruners.MedianPruner(
        n_startup_trials=tune_cfg.pruner.n_startup_trials,
        n_warmup_steps=tune_cfg.pruner.n_warmup_steps,
    )
    sampler = optuna.samplers.TPESampler(seed=tune_cfg.seed)
    attempts = 0
    while True:
        try:
            study = optuna.create_study(
                study_name=tune_cfg.study_name,
                storage=url,
                direction=direction,
                sampler=sampler,
                pruner=pruner,
                load_if_exists=True,
            )
        except Exception as exc:  # SQLAlchemy errors: bad URL, unreachable server, a race
            attempts += 1
            # Another program (a dashboard, a foreign tuner) may be creating the tables right
            # now: an IntegrityError, worth another try. Anything else is the URL's fault.
            if "IntegrityError" in repr(exc) and attempts < 3:
                time.sleep(1.0)
                continue
            raise ConfigError(
                f"tune.storage={hide_password(url)!r} is not usable "
                f"({type(exc).__name__}: "
                f"{first_line(exc)}): expected an RDB "
                "URL such as sqlite:///path/optuna.db or postgresql://host/db"
            ) from None
        # The sampler's state is not stored with the study: reseeded alike, a resumed study
        # would replay its first suggestions. Its seed moves on with the trials already made.
        if study.trials:
            study.sampler = optuna.samplers.TPESampler(seed=tune_cfg.seed + len(study.trials))
        return study


def finished_numbers(study: optuna.Study) -> set[int]:
    """Numbers of the study's trials that ended (completed, pruned or failed)."""
    return {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}


def requeue_interrupted(study: optuna.Study) -> list[int]:
    """Queue every interrupted trial's parameters again, once: the next trials run them.

    Its configuration is the same, so its training resumes from the backup the interruption
    left (the same MLflow run, continued), as the interrupted command promised.

    Returns:
        The numbers of the trials queued again.
    """
    done = set(study.user_attrs.get(REQUEUED_ATTR, []))
    again = [
        t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
        if t.user_attrs.get(INTERRUPTED_ATTR) and t.number not in done and t.params
    ]
    for t in again:
        study.enqueue_trial(t.params, user_attrs={"resumes_trial": t.number})
        log.info("tune: trial %d was interrupted: its parameters run again", t.number)
    if again:
        study.set_user_attr(REQUEUED_ATTR, sorted(done | {t.number for t in again}))
    return [t.number for t in again]
