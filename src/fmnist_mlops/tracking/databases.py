"""The SQL databases behind the stores and locks: URLs, one engine, reachability, safe errors.

Every message that names a database URL or repeats a driver's error goes through
:func:`hide_password` and :func:`first_line`, so no password reaches a log or a terminal.
"""

from __future__ import annotations

from typing import Any

# The databases a tracking server (and the registry's lock) can use, and how their URLs start
# (psycopg 3 is the PostgreSQL driver installed).
DATABASE_SCHEMES = ("sqlite", "postgresql")
DATABASE_URL_STARTS = ("sqlite:///", "postgresql://", "postgresql+psycopg://")


def scheme_of(uri: str) -> str:
    """``postgresql+psycopg://...`` -> ``postgresql``; a URI without ``://`` -> ``""``."""
    return uri.split("://", 1)[0].split("+", 1)[0] if "://" in uri else ""


def sqlalchemy_url(uri: str) -> str:
    """Rewrite ``postgresql://`` to ``postgresql+psycopg://``; other URLs are unchanged.

    The project installs psycopg 3, which SQLAlchemy would not pick for a bare URL.
    """
    if uri.startswith("postgresql://"):
        return "postgresql+psycopg://" + uri.removeprefix("postgresql://")
    return uri


def hide_password(text: str) -> str:
    """``scheme://user:password@host/...`` becomes ``scheme://***@host/...``; else unchanged."""
    if "://" in text and "@" in text.split("://", 1)[1].split("/", 1)[0]:
        scheme, rest = text.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return text


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an error (a driver's own error when SQLAlchemy wraps one), no password."""
    cause = getattr(exc, "orig", None) or exc
    lines = hide_password(str(cause)).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]


def engine(uri: str, timeout: float | None = None) -> Any:
    """An SQLAlchemy engine without a connection pool (each use connects and closes)."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    args = {"connect_timeout": int(timeout)} if timeout and scheme_of(uri) == "postgresql" else {}
    return sqlalchemy.create_engine(sqlalchemy_url(uri), poolclass=NullPool, connect_args=args)


def unreachable(uri: str, timeout: float = 5.0) -> str | None:
    """Why a database cannot be connected to (its first error line), or None if it can."""
    import sqlalchemy

    db = engine(uri, timeout)
    try:
        db.connect().close()
    except sqlalchemy.exc.SQLAlchemyError as exc:
        return first_line(exc)
    finally:
        db.dispose()
    return None
