"""``make champion-history``: every move of @champion, oldest first, as a table."""

from fmnist_mlops.tracking.stage_app import stage_app


def stage(ctx):
    """The stage: reads the registered model's history tags; writes nothing."""
    from fmnist_mlops.registry.history import champion_history

    return champion_history(ctx)


main = stage_app("champion_history", stage)

if __name__ == "__main__":
    main()
