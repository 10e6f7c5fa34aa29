"""Does an artifact store take a write? A probe object written and deleted, in bounded time.

MLflow retries a failed upload for minutes and a tracking server answers ``/health`` without
ever touching its bucket, so a broken store showed only at a run's first upload. The stages
and ``make server`` probe first and refuse in one line naming the cause: connection refused,
no such bucket, access denied. A leaf module: it answers with the problem, the caller refuses.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

PROBE_NAME = ".fmnist-mlops-probe"


class ProbeFailed(Exception):
    """The store cannot take a write; the message is the one line to show."""


def probe(location: str, what: str, timeout: float, tracking_uri: str | None = None) -> None:
    """Write and delete a probe object at ``location`` (an artifact root or destination).

    Args:
        location: ``/path``, ``file://``, ``s3://bucket/prefix`` or ``mlflow-artifacts:/...``
            (proxied by the tracking server at ``tracking_uri``). Other schemes are not probed.
        what: How the message names the store (``the artifact store of <experiment>``).
        timeout: Seconds the whole probe may take, about.
        tracking_uri: The tracking server's URL, for ``mlflow-artifacts:`` locations.

    Raises:
        ProbeFailed: the store cannot take a write, with the cause in one line.
    """
    parsed = urllib.parse.urlparse(location)
    name = f"{PROBE_NAME}-{uuid.uuid4().hex[:12]}"
    if parsed.scheme in ("", "file"):
        _probe_folder(Path(urllib.request.url2pathname(parsed.path)), name, what)
    elif parsed.scheme == "s3":
        _probe_s3(parsed.netloc, parsed.path.strip("/"), name, what, timeout)
    elif parsed.scheme == "mlflow-artifacts":
        base = f"http://{parsed.netloc}" if parsed.netloc else (tracking_uri or "")
        _probe_proxy(base.rstrip("/"), parsed.path.strip("/"), name, what, timeout)


def _probe_folder(folder: Path, name: str, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"probe")
        (folder / name).unlink()
    except OSError as exc:
        raise ProbeFailed(f"{what} {folder} cannot take a write ({exc.strerror})") from None


def _probe_proxy(base: str, path: str, name: str, what: str, timeout: float) -> None:
    """Through the tracking server's artifact proxy: the client needs no bucket credentials."""
    url = f"{base}/api/2.0/mlflow-artifacts/artifacts/" + "/".join(p for p in (path, name) if p)
    shown = f"{what} (served by {base})"
    for method, data in (("PUT", b"probe"), ("DELETE", None)):
        request = urllib.request.Request(url, data=data, method=method)
        try:
            urllib.request.urlopen(request, timeout=timeout).close()
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")
            raise ProbeFailed(
                f"{shown} cannot take a write: HTTP {exc.code} to a probe {method} "
                f"({_cause(body) or exc.reason}); see the tracking server's log"
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ProbeFailed(f"{shown} cannot take a write ({reason})") from None


def _probe_s3(bucket: str, prefix: str, name: str, what: str, timeout: float) -> None:
    endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None
    shown = f"{what} s3://{bucket}/{prefix}" + (f" at {endpoint}" if endpoint else "")
    try:
        import boto3
        import botocore.config
        import botocore.exceptions
    except ImportError:
        raise ProbeFailed(
            f"{shown} needs boto3 and botocore: install the s3 extra (`make install` does)"
        ) from None
    config = botocore.config.Config(
        connect_timeout=min(timeout, 10),
        read_timeout=timeout,
        retries={"max_attempts": 2, "mode": "standard"},
    )
    client = boto3.client("s3", endpoint_url=endpoint, config=config)
    key = f"{prefix}/{name}" if prefix else name
    try:
        client.put_object(Bucket=bucket, Key=key, Body=b"probe")
        client.delete_object(Bucket=bucket, Key=key)
    except botocore.exceptions.EndpointConnectionError as exc:
        raise ProbeFailed(f"{shown} cannot take a write (connection refused: {exc})") from None
    except botocore.exceptions.NoCredentialsError:
        raise ProbeFailed(
            f"{shown} cannot take a write (no credentials: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY)"
        ) from None
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise ProbeFailed(f"{shown} cannot take a write ({_cause(code) or code})") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise ProbeFailed(f"{shown} cannot take a write ({exc})") from None


_CAUSES = {
    "NoSuchBucket": "no such bucket",
    "AccessDenied": "access denied",
    "InvalidAccessKeyId": "access denied: unknown access key",
    "SignatureDoesNotMatch": "access denied: wrong secret key",
    "Could not connect": "connection refused",
    "Connection refused": "connection refused",
}


def _cause(text: str) -> str:
    """The cause a server's or S3's answer names, in a few words ('' if none is known)."""
    return next((cause for mark, cause in _CAUSES.items() if mark in text), "")
