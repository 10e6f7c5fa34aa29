"""Where the model trains: one device (default) or a ``tf.distribute`` strategy.

``train.distribute``:

- ``none``: TensorFlow's default strategy (all CPU cores, or the first GPU).
- ``mirrored``: ``MirroredStrategy``, synchronous data parallelism over the GPUs of one host.
  On a host without GPUs it mirrors over ``train.cpu_replicas`` logical CPU devices, which is
  how the path is tested on a CPU machine (it is not faster there: the replicas share cores).
- ``multi_worker``: ``MultiWorkerMirroredStrategy`` across hosts, each reading its role from
  ``TF_CONFIG`` (see README, "Distributed training").

``train.batch_size`` stays the global batch: Keras splits each batch across the replicas.
"""

from __future__ import annotations

import tensorflow as tf

from fmnist_mlops.schema import STRATEGIES


def _split_cpu(replicas: int) -> list[str]:
    """Split the host CPU into ``replicas`` logical devices (before TensorFlow starts up)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if not current or len(current) != replicas:
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)]
            )
        except RuntimeError as exc:  # the runtime already started with another layout
            raise RuntimeError(
                f"train.cpu_replicas={replicas}: TensorFlow is already initialised with "
                f"{len(current or [1])} CPU device(s); start a new process"
            ) from exc
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def make_strategy(name: str, cpu_replicas: int = 1) -> tf.distribute.Strategy:
    """The strategy for ``train.distribute`` (see the module docstring)."""
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if tf.config.list_physical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        return tf.distribute.MirroredStrategy(devices=_split_cpu(cpu_replicas))
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"train.distribute={name!r}: use one of {STRATEGIES}")
