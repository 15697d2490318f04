"""MkDocs hook: links from the pages to the repository's own files, which the site does not hold.

The pages under docs/ link to source files, examples and tests with relative paths
(`[fold.py](../flow/rounds/fold.py)`), which is what a reader of the Markdown on a forge or in an
editor can follow. The built site holds only the pages, so before a page is converted each such link
becomes a link to the file in the repository's web view when ``repo_url`` is set in mkdocs.yml, and
its plain text otherwise (MkDocs would report it as a link to a missing page, and ``--strict`` would
fail). Links to the repository-root Markdown files that the site shows as pages (the README's
sections on the overview, BENCHMARKS.md on the benchmarks page) become links to those pages. A
relative link to a path that does not exist is left as it is, so MkDocs still reports it.
tests/unit/test_docs.py checks every such link against the working tree.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

# repository-root files shown as site pages (docs/index.md includes the README's sections, and
# docs/benchmarks.md includes BENCHMARKS.md)
SITE_PAGES = {"README.md": "index.md", "BENCHMARKS.md": "benchmarks.md"}

_LINK = re.compile(r"(?<!!)\[(?P<text>[^\]\n]*)\]\((?P<target>[^)\s]+)\)")
_FENCE = re.compile(r"^(```|~~~)")


def _outside(target: str) -> bool:
    return not re.match(r"^([a-z][a-z0-9+.-]*:|#|/)", target)


def rewrite(markdown: str, src: Path, docs_dir: Path, repo: Path, repo_url: str | None) -> str:
    """`markdown` (the page at `src`) with its links to repository files outside `docs_dir` resolved."""

    def one(m: re.Match[str]) -> str:
        target = m.group("target")
        if not _outside(target):
            return m.group(0)
        path, _, anchor = target.partition("#")
        resolved = (src.parent / path).resolve()
        if resolved.is_relative_to(docs_dir) or not resolved.is_relative_to(repo) or not resolved.exists():
            return m.group(0)
        rel = resolved.relative_to(repo).as_posix()
        if rel in SITE_PAGES:
            page = posixpath.relpath(SITE_PAGES[rel], posixpath.dirname(src.relative_to(docs_dir).as_posix()) or ".")
            return f"[{m.group('text')}]({page}{'#' + anchor if anchor else ''})"
        if repo_url:
            view = "tree" if resolved.is_dir() else "blob"
            return f"[{m.group('text')}]({repo_url.rstrip('/')}/{view}/main/{rel})"
        return m.group("text")

    out, fenced = [], False
    for line in markdown.splitlines(keepends=True):
        if _FENCE.match(line.lstrip()):
            fenced = not fenced
        out.append(line if fenced else _LINK.sub(one, line))
    return "".join(out)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    docs_dir = Path(config["docs_dir"]).resolve()
    repo = Path(config["config_file_path"]).resolve().parent
    return rewrite(markdown, Path(page.file.abs_src_path).resolve(), docs_dir, repo, config.get("repo_url"))
