"""mkdocs hooks (``mkdocs.yml``: ``hooks:``): the site's home page is README.md itself, its
links turned from the repository's view (``docs/python.md``) to the site's (``python.md``),
so the front page and the site's home never drift apart."""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

README = Path(__file__).parent / "README.md"


def on_files(files: Files, config) -> Files:
    text = README.read_text(encoding="utf-8").replace("](docs/", "](")
    files.append(File.generated(config, "index.md", content=text))
    return files
