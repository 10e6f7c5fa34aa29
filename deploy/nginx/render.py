"""Render serving.conf.template: ``python deploy/nginx/render.py LISTEN UPSTREAM PREFIX``.

Example: ``python deploy/nginx/render.py 0.0.0.0:8080 127.0.0.1:5001 /var/lib/fmnist-proxy``
then ``nginx -c /var/lib/fmnist-proxy/nginx.conf``.
"""

from __future__ import annotations

import sys
from pathlib import Path

TEMPLATE = Path(__file__).with_name("serving.conf.template")


def render(listen: str, upstream: str, prefix: Path) -> Path:
    """Write ``<prefix>/nginx.conf`` for these addresses; return its path."""
    prefix.mkdir(parents=True, exist_ok=True)
    text = TEMPLATE.read_text()
    for key, value in (("@LISTEN@", listen), ("@UPSTREAM@", upstream), ("@PREFIX@", str(prefix))):
        text = text.replace(key, value)
    conf = prefix / "nginx.conf"
    conf.write_text(text)
    return conf


if __name__ == "__main__":
    listen, upstream, prefix = sys.argv[1:4]
    print(render(listen, upstream, Path(prefix).resolve()))
