"""DVC stage ``evaluate``: test-set metrics and reports in the train run, then the promotion rule.

``python src/register.py`` runs the promotion rule alone.
"""

from fmnist_mlops.tracking.stage_app import stage_app


def stage(ctx):
    """The stage, imported only now: ``--help`` and bad input never load TensorFlow."""
    from fmnist_mlops.registry.stages import evaluate_and_promote

    return evaluate_and_promote(ctx)


main = stage_app("evaluate", stage)

if __name__ == "__main__":
    main()
