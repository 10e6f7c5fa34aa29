"""``make reproduce [VERSION=N]``: rebuild a registered version and compare it with its record."""

from fmnist_mlops.tracking.stage_app import stage_app


def stage(cfg):
    """Validate both parts first, then import the stage: bad input never loads TensorFlow."""
    from omegaconf import OmegaConf, open_dict

    from fmnist_mlops.config.commands import validate_reproduce
    from fmnist_mlops.tracking.context import open_stage

    settings = validate_reproduce(cfg.reproduce)
    project = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(project):
        del project["reproduce"]
    ctx = open_stage(project)
    from fmnist_mlops.reproduce.reproduction import reproduce

    return reproduce(ctx, settings)


main = stage_app("reproduce", stage, config_name="reproduce", context=False)

if __name__ == "__main__":
    main()
