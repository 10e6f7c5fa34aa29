"""The data layer: find and verify the real Fashion-MNIST, split it, feed and augment batches."""
