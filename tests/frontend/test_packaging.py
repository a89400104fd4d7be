"""The page's files ship in the wheel: pyproject's package-data covers every one of them."""

from __future__ import annotations

import sys
from pathlib import Path

from pagedllm.entrypoints.frontend.router import STATIC_DIR

ROOT = Path(__file__).resolve().parents[2]


def test_package_data_covers_the_static_files():
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["pagedllm"]
    package = ROOT / "pagedllm"
    shipped = {p for pattern in patterns for p in package.glob(pattern) if p.is_file()}
    files = {p for p in STATIC_DIR.iterdir() if p.is_file()}
    assert {"index.html", "app.js", "api.js", "markdown.js", "store.js", "style.css"} <= {
        p.name for p in files}
    assert files <= shipped, sorted(str(p) for p in files - shipped)


def test_index_loads_only_local_assets():
    html = (STATIC_DIR / "index.html").read_text()
    assert "http://" not in html and "https://" not in html and "<script>" not in html
    for name in ("app.js", "api.js", "markdown.js", "store.js"):
        text = (STATIC_DIR / name).read_text()
        assert "http://" not in text and "https://" not in text.replace(
            "https?:\\/\\/", ""), name  # only markdown.js's link-scheme check mentions https
