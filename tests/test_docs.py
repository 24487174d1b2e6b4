"""The documentation holds together: every page is in the site's navigation, every README link into docs/ resolves,
and the site builds with `mkdocs build --strict` (a broken link, anchor or reference fails it)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = ["index", "cli", "api", "relion", "scipion", "cryosparc", "service", "scaling", "browser", "formats",
         "models", "troubleshooting", "benchmarks", "architecture"]


def nav_files(nav) -> list[str]:
    """Every file named in mkdocs.yml's nav, in order."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [f for v in nav.values() for f in nav_files(v)]
    return [f for item in nav for f in nav_files(item)]


def links(path: Path) -> list[str]:
    """The targets of a Markdown file's inline links and images, outside code blocks."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    return re.findall(r"\]\(([^)\s]+)\)", text)


def test_every_page_is_in_the_nav_and_every_nav_entry_is_a_page():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["docs_dir"] == "docs" and config["strict"] is True
    assert config["theme"]["name"] == "material" and config["theme"]["font"] is False
    nav = nav_files(config["nav"])
    pages = sorted(p.name for p in DOCS.glob("*.md"))
    assert sorted(n for n in nav if "/" not in n and (DOCS / n).exists()) == pages
    assert {f"{p}.md" for p in PAGES} <= set(pages)
    # the other nav entries are the top-level files docs/hooks.py adds to the site
    assert [n for n in nav if not (DOCS / n).exists()] == ["BENCHMARKS.md", "DATA.md"]


def test_readme_links_into_docs_resolve():
    targets = [t for t in links(ROOT / "README.md") if not re.match(r"[a-z]+:", t)]
    to_docs = {t.split("#")[0] for t in targets if t.startswith("docs/")}
    assert {f"docs/{p}.md" for p in PAGES} <= to_docs, "the README links every page"
    for target in targets:
        file, _, anchor = target.partition("#")
        assert (ROOT / file).exists(), f"README links to {target}, which does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", (ROOT / file).read_text(), re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
            assert anchor in slugs, f"README links to {target}: no such heading"


def test_page_links_to_repository_files_resolve_on_github_too():
    # the site rewrites ../BENCHMARKS.md and ../DATA.md (docs/hooks.py); on GitHub they are plain relative links
    for page in DOCS.glob("*.md"):
        for target in links(page):
            if target.startswith("../"):
                assert (DOCS / target.split("#")[0]).resolve().is_file(), f"{page.name}: {target}"


def test_readme_stays_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_the_site_builds_strictly(tmp_path: Path):
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600, env={"NO_MKDOCS_2_WARNING": "1",
                                                                                    "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("pupick.core.api.pick", "pupick.core.train.train", "pupick.core.api.PickConfig"):
        assert f'id="{name}"' in api, f"the API reference lacks {name}"
