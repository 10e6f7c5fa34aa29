"""Hyper-parameter search: ``python src/tune.py tune.n_trials=20 tune.timeout_s=1800``."""

from fmnist_mlops.tracking.stage_app import stage_app


def stage(cfg):
    """Validate first, then import the stage: bad input and ``--help`` never load TensorFlow.

    Both the tuner's settings and the project config its trials start from are checked.
    """
    from hydra.core.hydra_config import HydraConfig

    from fmnist_mlops.config.commands import validate_tune
    from fmnist_mlops.config.compose import compose, project_overrides
    from fmnist_mlops.tracking.context import open_stage

    tune_cfg = validate_tune(cfg.tune)
    base = project_overrides(list(HydraConfig.get().overrides.task))
    ctx = open_stage(compose(base))
    from fmnist_mlops.experiments.tuning import tune
    from fmnist_mlops.registry.stages import promote_child
    from fmnist_mlops.train.training import train

    return tune(ctx, tune_cfg, base, train, promote_child)


main = stage_app("tune", stage, config_name="tune", context=False)

if __name__ == "__main__":
    main()
