"""Errors a user can fix: entry points print them as one line and exit non-zero."""


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
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
