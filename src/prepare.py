"""DVC stage ``prepare``: find, verify and split the real Fashion-MNIST IDX files."""

from fmnist_mlops.tracking.stage_app import stage_app


def stage(cfg):
    """The stage, imported only now: ``--help`` and ``--cfg job`` never load TensorFlow."""
    from fmnist_mlops.data.preparation import prepare

    return prepare(cfg)


main = stage_app("prepare", stage, context=False)

if __name__ == "__main__":
    main()
