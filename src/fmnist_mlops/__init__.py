"""fashion-mnist-mlops: a reproducible, tracked and servable Fashion-MNIST CNN.

The data set's constants live here, where every layer may import them. Only the served model's
own code (``model/pyfunc_model.py``, copied into every logged model, which must not import this
package) repeats the image shape.
"""

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SHAPE = (28, 28)  # grayscale, raw 0-255 pixels
TRAIN_IMAGES, TEST_IMAGES = 60_000, 10_000
