"""The model layer: the CNN (``cnn``) and the served pyfunc model's own code (``pyfunc_model``)."""
