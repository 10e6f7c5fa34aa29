"""``make report``: a self-contained HTML report of the registered champion."""

from fmnist_mlops.tracking.stage_app import stage_app


def stage(ctx):
    """The stage, imported only now: ``--help`` and bad input never load TensorFlow."""
    from fmnist_mlops.evaluate.reporting import build_report

    return build_report(ctx)


main = stage_app("report", stage)

if __name__ == "__main__":
    main()
