"""The docs site builds with ``mkdocs build --strict`` (broken links and missing pages fail it),
its generated reference pages match the code, and the README stays a short, working entry.

Needs the docs extra (mkdocs-material, mkdocs-click, mkdocstrings), which the test extra includes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from experiments import config
from orchestrator.cli.main import cli

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built once into a temporary folder with --strict."""
    pytest.importorskip("mkdocs", reason="the docs extra is missing: pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # material's banner about its successor, on every build
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return out


def test_site_builds_strict_with_every_page(site):
    for page in ("tutorial", "how-to/own-code", "how-to/resume", "how-to/queue", "how-to/slurm", "how-to/tuning",
                 "how-to/seeds", "how-to/ui", "how-to/provenance", "reference/cli", "reference/config",
                 "reference/grid", "reference/mlflow", "reference/exit-codes", "reference/environment", "reference/api",
                 "explanation/architecture", "explanation/failures", "explanation/statistics",
                 "explanation/study", "benchmarks", "development", "changelog"):
        assert (site / page / "index.html").is_file(), page


def test_reference_pages_match_the_code():
    proc = subprocess.run([sys.executable, "docs/gen_reference.py", "--check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, f"{proc.stderr}\n{proc.stdout[-5000:]}"


def test_config_reference_has_every_key():
    page = (ROOT / "docs" / "reference" / "config.md").read_text()
    missing = [key for key in config.KEYS if f"| `{key}` |" not in page]
    assert not missing, f"config keys without a reference entry: {missing}"


def _commands(group: click.Group, prefix: str = "orch"):
    for name, command in group.commands.items():
        yield f"{prefix} {name}", command
        if isinstance(command, click.Group):
            yield from _commands(command, f"{prefix} {name}")


def test_cli_reference_has_every_command_and_option(site):
    html = (site / "reference" / "cli" / "index.html").read_text()
    text = re.sub(r"<[^>]+>", "", html)
    missing = []
    for path, command in _commands(cli):
        if path not in text:
            missing.append(path)
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                missing += [f"{path} {opt}" for opt in param.opts if opt not in text]
    assert not missing, f"missing from the CLI reference: {missing}"


def test_readme_is_short_and_its_links_resolve():
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    assert "make demo" in text and "make test" in text
    assert re.search(r"!\[[^\]]*\]\(docs/images/[\w-]+\.png\)", text), "the README shows no picture"
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    broken = [t for t in targets if not t.startswith(("http://", "https://")) and not (ROOT / t).exists()]
    assert not broken, f"README links to missing files: {broken}"


def test_docs_images_are_small_and_used():
    images = sorted((ROOT / "docs" / "images").glob("*.png"))
    assert images and sum(p.stat().st_size for p in images) < 1_000_000
    pages = "".join(p.read_text() for p in (ROOT / "docs").rglob("*.md")) + README.read_text()
    unused = [p.name for p in images if p.name not in pages]
    assert not unused, f"images no page shows (delete them or show them): {unused}"
