"""Where the model trains: one device (default) or a ``tf.distribute`` strategy.

``train.distribute``:

- ``none``: TensorFlow's default strategy (all CPU cores, or the first GPU).
- ``mirrored``: ``MirroredStrategy``, synchronous data parallelism over the GPUs of one host.
  On a host without GPUs it mirrors over ``train.cpu_replicas`` logical CPU devices, which is
  how the path is tested on a CPU machine (it is not faster there: the replicas share cores).
- ``multi_worker``: ``MultiWorkerMirroredStrategy`` across hosts, each reading its role from
  ``TF_CONFIG`` (:mod:`cluster`). Collectives time out after :data:`PEER_TIMEOUT` seconds, so
  the workers of a training that lost one end instead of waiting forever.

``train.batch_size`` stays the global batch: Keras splits each batch across the replicas.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from fmnist_mlops.config.schema import STRATEGIES
from fmnist_mlops.runtime.errors import PeerLost

# Seconds a collective waits for a peer. A step here takes milliseconds; a dead peer must end
# the others well within two minutes (TensorFlow's own health check adds up to ~40 s).
PEER_TIMEOUT = 30.0
# What a collective raises when a peer is gone (killed, unreachable, its process ended).
_PEER_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.CancelledError,
    tf.errors.AbortedError,
)
# Other error types carry the same news in their text (an aborted collective is sometimes an
# InternalError, depending on which step noticed the peer was gone).
_PEER_MARKS = ("Collective ops is aborted", "are unhealthy", "grpc_message", "coordination service")


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
    """The strategy for ``train.distribute`` (see the module docstring).

    The multi-worker strategy is made once per process (TensorFlow allows one, made before
    other work): every later call returns that same object.
    """
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if tf.config.list_physical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        return tf.distribute.MirroredStrategy(devices=_split_cpu(cpu_replicas))
    if name == "multi_worker":
        return _multi_worker()
    raise ValueError(f"train.distribute={name!r}: use one of {STRATEGIES}")


@functools.cache
def _multi_worker() -> tf.distribute.Strategy:
    _fix_keras_for_multi_worker()
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=PEER_TIMEOUT)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """Whether ``strategy`` spans worker processes."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def broadcast_text(
    strategy: tf.distribute.Strategy, text: str | None, size: int = 4096
) -> str | None:
    """The chief's ``text`` on every worker (what the others pass is ignored).

    An all-reduce sum in which only the first replica (on the chief) contributes its bytes.
    """
    data = np.zeros(size, np.int32)
    if text:
        raw = text.encode()
        if len(raw) >= size:
            raise ValueError(f"{len(raw)} bytes to broadcast; at most {size - 1}")
        data[: len(raw)] = np.frombuffer(raw, np.uint8)

    @tf.function
    def share() -> tf.Tensor:
        ctx = tf.distribute.get_replica_context()
        mine = tf.where(ctx.replica_id_in_sync_group == 0, tf.constant(data), 0)
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, mine)

    with peers_guarded():
        shared = strategy.experimental_local_results(strategy.run(share))[0].numpy()
    return bytes(shared[shared > 0].astype(np.uint8)).decode() or None


def gather_text(strategy: tf.distribute.Strategy, text: str, size: int = 16384) -> list[str]:
    """Every worker's ``text``, in worker order, on every worker.

    An all-reduce sum of one row per worker in which each worker fills only its own row.
    """
    raw = text.encode()
    if len(raw) >= size:
        raise ValueError(f"{len(raw)} bytes to gather; at most {size - 1}")
    data = np.zeros(size, np.int32)
    data[: len(raw)] = np.frombuffer(raw, np.uint8)
    workers = strategy.num_replicas_in_sync

    @tf.function
    def share() -> tf.Tensor:
        ctx = tf.distribute.get_replica_context()
        row = tf.one_hot(ctx.replica_id_in_sync_group, workers, dtype=tf.int32)
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, row[:, None] * tf.constant(data)[None])

    with peers_guarded():
        rows = strategy.experimental_local_results(strategy.run(share))[0].numpy()
    return [bytes(row[row > 0].astype(np.uint8)).decode() for row in rows]


@contextlib.contextmanager
def peers_guarded() -> Iterator[None]:
    """Turn a collective's "peer gone" error into :class:`PeerLost` (a resumable interruption)."""
    try:
        yield
    except tf.errors.OpError as exc:
        text = str(exc)
        if not isinstance(exc, _PEER_ERRORS) and not any(m in text for m in _PEER_MARKS):
            raise
        # TensorFlow's message starts with "Graph execution error:" and a traceback; gRPC's
        # own words ("Socket closed", "Connection reset by peer") say what happened.
        found = re.search(r'grpc_message:"([^"]+)"', text)
        cause = f": {found.group(1)[:160]}" if found else ""
        raise PeerLost(f"{type(exc).__name__}{cause}") from None


def _fix_keras_for_multi_worker() -> None:
    """Two Keras 3 bugs that make ``fit`` fail under ``MultiWorkerMirroredStrategy``.

    keras-team/keras#20585 (open): before the first step ``fit`` takes one batch for a
    symbolic build and averages it across workers, and after every step it averages the
    scalar logs over ``axis=0``; under a multi-worker strategy both raise ("unsupported type
    PerReplica", "Invalid reduction dimension 0"). Here the build uses this worker's share of
    the batch (only shapes matter) and scalars are averaged over the workers as they are.
    Applied only when a multi-worker strategy is made; other strategies never see it.
    """
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer

    if getattr(trainer, "_fmnist_multi_worker_fix", False):
        return
    reduce_per_replica = trainer.reduce_per_replica
    symbolic_build = trainer.TensorFlowTrainer._maybe_symbolic_build

    def reduce_scalars_over_workers(values, strategy, reduction="auto"):
        if reduction in ("auto", "mean") and is_multi_worker(strategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return reduce_per_replica(values, strategy, reduction)

    def build_from_local_batch(self, iterator=None, data_batch=None):
        if iterator is not None and is_multi_worker(self.distribute_strategy):
            local = self.distribute_strategy.experimental_local_results
            for _, _, it in iterator:
                batch = next(it)
                data_batch = tree.map_structure(
                    lambda v: local(v)[0] if isinstance(v, tf.distribute.DistributedValues) else v,
                    batch,
                )
                break
            iterator = None
        return symbolic_build(self, iterator=iterator, data_batch=data_batch)

    trainer.reduce_per_replica = reduce_scalars_over_workers
    trainer.TensorFlowTrainer._maybe_symbolic_build = build_from_local_batch
    trainer._fmnist_multi_worker_fix = True
