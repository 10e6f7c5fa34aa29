"""Serving the registered model: local model servers and predictions from image files."""
