"""fashion-mnist-mlops: a reproducible, tracked and servable Fashion-MNIST CNN.

The layers are its subpackages (docs/architecture.md); the data set's constants live with the
config they are checked against (:mod:`fmnist_mlops.config.schema`).
"""
