"""``make rollback``: move @champion back to the previous champion."""

from fmnist_mlops.tracking.stage_app import stage_app


def stage(ctx):
    """The stage, imported only now: ``--help`` and bad input never load TensorFlow."""
    from fmnist_mlops.registry.promotion import rollback

    return rollback(ctx)


main = stage_app("rollback", stage)

if __name__ == "__main__":
    main()
