"""The ``train`` stage.

The fit loop, its callbacks and resume, devices and workers, the logged model.
"""
