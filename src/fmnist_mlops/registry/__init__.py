"""The registry.

When a candidate beats ``@champion``, promotion, rollback, one mover at a time.
"""
