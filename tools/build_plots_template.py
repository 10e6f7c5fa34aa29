"""Build ``deploy/dvc-plots/offline.html``: DVC's plot page with vega inlined, for offline use.

DVC's default ``dvc plots show`` page loads vega, vega-lite and vega-embed from a CDN, so it
renders blank without internet. This template inlines the same versions DVC would fetch, taken
from the npm registry, and leaves out DVC's ``{scripts}`` placeholder (the CDN tags)::

    cd "$(mktemp -d)" && npm pack vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2 \
        && for f in *.tgz; do mkdir "${f%.tgz}" && tar xzf "$f" -C "${f%.tgz}"; done
    python tools/build_plots_template.py <that folder>

``.dvc/config`` points ``plots.html_template`` at the result.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PACKAGES = (
    ("vega-5.20.2", "vega.min.js"),
    ("vega-lite-5.2.0", "vega-lite.min.js"),
    ("vega-embed-6.18.2", "vega-embed.min.js"),
)
OUT = Path(__file__).resolve().parents[1] / "deploy" / "dvc-plots" / "offline.html"


def build(npm_dir: Path) -> str:
    """The template text, scripts inlined, source-map comments dropped (no map files ship)."""
    scripts = []
    for package, name in PACKAGES:
        folder = next(p for p in npm_dir.glob(f"{package}*") if p.is_dir())
        folder = folder / "package" if (folder / "package").is_dir() else folder
        js = (folder / "build" / name).read_text()
        js = re.sub(r"//# sourceMappingURL=\S+\s*$", "", js)
        if "</script" in js.lower():
            raise SystemExit(f"{name} contains </script and cannot be inlined")
        license_head = (folder / "LICENSE").read_text().splitlines()[0]
        scripts.append(f"<!-- {package} ({license_head}; BSD-3-Clause) -->\n<script>{js}</script>")
    return (
        '<!DOCTYPE html>\n<html>\n<head>\n    {refresh_tag}\n    <meta charset="utf-8">\n'
        "    <title>DVC Plot (offline)</title>\n" + "\n".join(scripts) + "\n"
        "    <style>\n        table { border-spacing: 15px; }\n    </style>\n"
        "</head>\n<body>\n    {plot_divs}\n</body>\n</html>\n"
    )


if __name__ == "__main__":
    OUT.write_text(build(Path(sys.argv[1])))
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KB)")
