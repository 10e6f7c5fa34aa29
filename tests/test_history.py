"""What a training logs per epoch beyond its metrics: the time it took to get there."""

from __future__ import annotations

from fmnist_mlops.train.history import ELAPSED, logged_metrics, time_to_accuracy


def test_time_to_accuracy_is_read_from_the_first_epoch_that_reaches_each_threshold():
    history = {"val_accuracy": [0.89, 0.905, 0.93, 0.925], ELAPSED: [4.0, 8.5, 12.0, 16.0]}
    assert time_to_accuracy(history) == {
        "time_to_val_accuracy_0.90": 8.5,
        "time_to_val_accuracy_0.92": 12.0,
    }, "0.94 and 0.95 never reached: not logged"
    # A backup from before elapsed times were kept: nothing rather than a wrong figure.
    assert time_to_accuracy({"val_accuracy": [0.95], ELAPSED: []}) == {}


def test_each_epoch_logs_the_training_time_so_far():
    logs = {"loss": 0.5, "val_accuracy": 0.9, ELAPSED: 3.25, "learning_rate": 0.001}
    assert logged_metrics(logs) == {"loss": 0.5, "val_accuracy": 0.9, ELAPSED: 3.25, "lr": 0.001}
