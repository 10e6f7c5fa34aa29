"""The one way a script in ``src/`` becomes a command: ``main = stage_app("train", stage)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from fmnist_mlops.runtime.cli import entry, run


def stage_app(
    name: str,
    fn: Callable[[Any], Any],
    config_name: str = "config",
    hooks: Callable[[DictConfig], dict[str, Any]] | None = None,
    context: bool = True,
) -> Callable[[], None]:
    """A Hydra app running the script's stage function ``fn``.

    The app composes ``conf/<config_name>``; with ``context`` it validates the config and
    opens the stage's context (:func:`~fmnist_mlops.tracking.context.open_stage`) and calls
    ``fn(ctx)``, else ``fn(cfg)``. ``fn`` imports what it runs, so ``--help`` and bad input never
    load TensorFlow. Results, errors and signals are handled by ``cli.run`` (with
    ``hooks(cfg)``, e.g. a sweep job's); Hydra's own errors become one line (``cli.entry``).
    """
    from fmnist_mlops.runtime import tfquiet

    tfquiet.install()  # before anything imports TensorFlow: its start-up banner stays out
    import hydra

    def call(cfg: DictConfig) -> Any:
        if not context:
            return fn(cfg)
        from fmnist_mlops.tracking.context import open_stage

        return fn(open_stage(cfg))

    def task(cfg: DictConfig) -> None:
        run(name, call, cfg, **(hooks(cfg) if hooks else {}))

    # Hydra names the job and finds ../conf from the function it wraps: the script's own.
    task.__wrapped__ = fn  # type: ignore[attr-defined]
    app = hydra.main(config_path="../conf", config_name=config_name, version_base=None)(task)
    return lambda: entry(name, app)
