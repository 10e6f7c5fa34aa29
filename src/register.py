"""Register the evaluated model, promote it to @champion if it is better.

The DVC ``evaluate`` stage already does this after scoring; run this to repeat only the
promotion (e.g. after a registry outage) for the model in ``paths.out``.
"""

from fmnist_mlops.tracking.stage_app import stage_app


def stage(ctx):
    """The stage, imported only now: ``--help`` and bad input never load TensorFlow."""
    from fmnist_mlops.registry.promotion import promote

    return promote(ctx)


main = stage_app("register", stage)

if __name__ == "__main__":
    main()
