"""The typed config: its schema, composing it from ``conf/`` with Hydra, and ``params.yaml``."""
