"""Print the GFLOP/s of a large TensorFlow matmul in the dtype given (own process, best of 5)."""

import sys
import time

import tensorflow as tf


def main(dtype: str, n: int = 2048) -> float:
    """Best of five timings of ten ``n``×``n`` matmuls in ``dtype``."""
    a = tf.cast(tf.random.normal((n, n), dtype=tf.float32), dtype)
    b = tf.identity(a)
    f = tf.function(lambda x, y: tf.matmul(x, y))
    f(a, b).numpy()
    best = 0.0
    for _ in range(5):
        started, k = time.perf_counter(), 10
        for _ in range(k):
            c = f(a, b)
        c.numpy()
        best = max(best, 2 * n**3 * k / (time.perf_counter() - started) / 1e9)
    return best


if __name__ == "__main__":
    print(main(sys.argv[1]))
