"""The docs match the code: every option a command has is documented, every documented option exists,
every relative link and anchor in README.md and docs/ resolves, and the README stays short."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer

from runner.cli.app import app

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PENDING = {REPO / "docs" / "install.md"}      # written on the packaging branch; linked before it lands
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def click_command(*path: str):
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return command


def cli_options(*path: str) -> set[str]:
    """Every option string of a command (hidden ones, such as --engine, excluded; -h/--help too)."""
    found = set()
    for param in click_command(*path).params:
        if getattr(param, "hidden", False) or param.param_type_name != "option":
            continue
        found.update(o for o in [*param.opts, *param.secondary_opts] if o not in ("-h", "--help"))
    return found


def section(doc: str, heading: str) -> str:
    """The text under a markdown heading, up to the next heading of the same or a higher level."""
    text = (REPO / doc).read_text()
    match = re.search(rf"^(#+) {re.escape(heading)}\s*$", text, re.M)
    assert match, f"{doc}: no heading {heading!r}"
    level = len(match.group(1))
    rest = text[match.end():]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.M)
    return rest[:end.start()] if end else rest


def documented_options(text: str) -> set[str]:
    """Options written in backticks (`-np N...`, `--raw DIR`) outside code blocks."""
    found = set()
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)       # code blocks: examples, not the reference
    for code in re.findall(r"`([^`]+)`", text):
        for word in code.split():
            word = word.rstrip(",")
            if re.fullmatch(r"--?[A-Za-z][\w-]*", word):
                found.add(word)
    return found


@pytest.mark.parametrize(("path", "doc", "heading"), [
    (("preprocess",), "docs/usage.md", "`nnrun preprocess`"),
    (("estimate",), "docs/usage.md", "`nnrun estimate`"),
    (("report",), "docs/usage.md", "`nnrun report RUN_DIR`"),
    (("doctor",), "docs/usage.md", "`nnrun doctor`"),
    (("merge",), "docs/usage.md", "`nnrun merge`"),
    (("make-demo",), "docs/usage.md", "`nnrun make-demo`, `nnrun version`"),
    (("slurm", "submit"), "docs/scale-out.md", "Slurm"),
    (("slurm", "status"), "docs/scale-out.md", "Slurm"),
    (("k8s", "manifest"), "docs/scale-out.md", "Kubernetes"),
    (("k8s", "diagnose"), "docs/scale-out.md", "Kubernetes"),
])
def test_every_option_of_a_command_is_documented(path, doc, heading):
    missing = cli_options(*path) - documented_options(section(doc, heading))
    assert not missing, f"nnrun {' '.join(path)}: options not in {doc} ({heading}): {sorted(missing)}"


@pytest.mark.parametrize(("paths", "doc", "heading"), [
    ((("preprocess",),), "docs/usage.md", "`nnrun preprocess`"),
    ((("estimate",),), "docs/usage.md", "`nnrun estimate`"),
    ((("report",),), "docs/usage.md", "`nnrun report RUN_DIR`"),
    ((("doctor",),), "docs/usage.md", "`nnrun doctor`"),
    ((("merge",),), "docs/usage.md", "`nnrun merge`"),
    ((("slurm", "submit"),), "docs/scale-out.md", "Slurm"),
    ((("k8s", "manifest"), ("k8s", "diagnose")), "docs/scale-out.md", "Kubernetes"),
])
def test_every_option_in_an_options_table_exists(paths, doc, heading):
    text = section(doc, heading)
    table = "\n".join(line.split("|")[1] for line in text.splitlines() if line.startswith("| `"))
    known = set().union(*(cli_options(*path) for path in paths))
    extra = documented_options(table) - known
    assert not extra, f"{doc} ({heading}) documents options the command does not have: {sorted(extra)}"


def test_the_top_level_options_are_documented():
    text = (REPO / "docs" / "usage.md").read_text()
    for option in ("--version", "--install-completion", "--show-completion"):
        assert option in cli_options() and option in text


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_relative_links_and_anchors_resolve():
    broken = []
    for doc in DOCS:
        for target in LINK.findall(doc.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            file_part, _, anchor = target.partition("#")
            path = (doc.parent / file_part).resolve() if file_part else doc
            if path in PENDING and not path.exists():
                continue
            if not path.exists():
                broken.append(f"{doc.name}: {target} (no such file)")
                continue
            if anchor and path.suffix == ".md":
                slugs = {_slug(h) for h in re.findall(r"^#+ (.+)$", path.read_text(), re.M)}
                if anchor not in slugs:
                    broken.append(f"{doc.name}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_readme_fits_a_screen_or_two():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 120, len(lines)
    for script in ("scripts/demo.sh", "scripts/test.sh"):           # the two commands, and they exist
        assert any(line.startswith(script) for line in lines) and (REPO / script).exists()
    assert "scripts/test.sh" in (REPO / ".ci" / "run").read_text()
