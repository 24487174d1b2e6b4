"""MkDocs hooks (mkdocs.yml `hooks:`): the API reference's source tree, and the top-level pages.

1. mkdocstrings reads the source statically (griffe), which cannot follow the package-dir mapping of an editable
   install (`pupick.core` is the folder `core/`). `on_startup` lays out `build/api_src/pupick/<name>` as symlinks to
   the folders named in pyproject.toml's `[tool.setuptools] package-dir`; mkdocs.yml's handler `paths` points there.
2. The repository's BENCHMARKS.md (with its figure) and DATA.md become pages of the site. The pages link to them as
   `../BENCHMARKS.md`, which is right on GitHub, where docs/ sits next to them; the hooks add the files to the site
   and point those links at the copies, so `mkdocs build --strict` checks them like any link.
"""
from __future__ import annotations

import sys
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
API_SRC = ROOT / "build" / "api_src"
TOP_LEVEL = ("BENCHMARKS.md", "BENCHMARKS_pr.png", "BENCHMARKS_scale.png", "DATA.md")


def _package_dirs() -> dict[str, str]:
    """pyproject.toml's package-dir mapping, e.g. {"pupick.core": "core", ...}."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        from pip._vendor import tomli as tomllib
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]["package-dir"]


def on_startup(command, dirty):
    """Lay out build/api_src/pupick/<name> -> the source folders, for mkdocstrings: at start-up, since mkdocstrings
    drops a handler path that does not exist yet when its own config event runs (before this file's)."""
    # Run as `.venv/bin/mkdocs`, sys.path starts with .venv/bin, where the `pupick` console script would be taken
    # for a part of the `pupick` namespace package.
    scripts = Path(sys.argv[0]).resolve().parent
    sys.path[:] = [p for p in sys.path if not p or Path(p).resolve() != scripts]
    for package, folder in _package_dirs().items():
        link = API_SRC.joinpath(*package.split("."))
        link.parent.mkdir(parents=True, exist_ok=True)
        target = ROOT / folder
        if link.is_symlink() and link.resolve() == target:
            continue
        if link.is_symlink():
            link.unlink()
        link.symlink_to(target, target_is_directory=True)


def on_files(files: Files, config) -> Files:
    """Add the top-level files to the site."""
    for name in TOP_LEVEL:
        files.append(File.generated(config, name, abs_src_path=str(ROOT / name)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Point `../NAME` links of the docs/ pages at the added copies."""
    if page.file.src_uri in TOP_LEVEL:
        return markdown
    for name in TOP_LEVEL:
        markdown = markdown.replace(f"](../{name}", f"]({name}")
    return markdown
