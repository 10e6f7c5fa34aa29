"""Errors a user can fix: entry points print them as one line and exit non-zero."""

from typing import Any


class ProjectError(Exception):
    """Base class for errors caused by input (data, config, registry state), not by bugs."""


class DataError(ProjectError):
    """Raw or prepared data is missing, corrupt or inconsistent."""


class ConfigError(ProjectError):
    """A config value is out of its accepted range."""


class RegistryError(ProjectError):
    """The model registry is not in a state the requested action accepts."""


class TrainingDiverged(ProjectError):
    """The loss became NaN or infinite (usually a learning rate that is too high)."""


class Interrupted(BaseException):  # noqa: N818  (a signal, like KeyboardInterrupt)
    """SIGTERM or SIGINT arrived; a BaseException so no ``except Exception`` swallows it."""

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


class PeerLost(Interrupted):
    """A multi-worker training lost a worker: interrupted like a signal, and as resumable."""

    def __init__(self, why: str) -> None:
        import signal

        super().__init__(signal.SIGTERM)
        self.exit_code = 75  # EX_TEMPFAIL: the same command resumes it
        self.args = (f"a peer worker was lost ({why})",)


# The signals an entry point's handler received, in order of arrival. The handler raises
# Interrupted at once, but a raise that lands inside library code can be lost (a SIGINT during
# ``fit`` once ended in a normal exit 0), so long loops also poll this.
_received: list[int] = []


def note_signal(signum: int) -> None:
    """Remember that ``signum`` arrived (called by the entry points' signal handler)."""
    _received.append(signum)


# Code that talks to the tracking store. A raise inside it can leave a SQLite transaction open
# on a connection the traceback still holds: marking the run KILLED then fails with "database
# is locked" and the run stays RUNNING (seen when SIGTERM met an epoch's metrics write).
_STORE_CODE = ("sqlalchemy.", "alembic.", "mlflow.store.")


def inside_store_call(frame: Any) -> bool:
    """Whether ``frame`` (where a signal interrupted the program) is inside store code."""
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(_STORE_CODE):
            return True
        frame = frame.f_back
    return False


def raise_if_interrupted() -> None:
    """Raise :class:`Interrupted` if a signal arrived, even if its first raise was lost."""
    if _received:
        raise Interrupted(_received[0])
