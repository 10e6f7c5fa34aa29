"""DVC stage ``train`` and ad-hoc experiments: ``python src/train.py model.filters=[32,64]``."""

from fmnist_mlops.tracking import nesting
from fmnist_mlops.tracking.stage_app import stage_app


def stage(ctx):
    """The stage, imported only now: ``--help`` and bad input never load TensorFlow."""
    from fmnist_mlops.train.training import train

    return train(ctx)


# In a sweep (``-m``) a failed job is reported and the sweep goes on.
main = stage_app("train", stage, hooks=nesting.job_hooks)

if __name__ == "__main__":
    main()
