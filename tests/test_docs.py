"""The documentation the code generates is current."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_config_reference_is_current_and_lists_every_key():
    from latentdiff.config import AERunConfig, LDMRunConfig, reference_markdown, to_dict

    text = reference_markdown() + "\n"
    assert (ROOT / "docs" / "config.md").read_text() == text, \
        "docs/config.md is stale: run python docs/make_config_reference.py"

    def keys(d, prefix=""):
        for k, v in d.items():
            yield from keys(v, f"{prefix}{k}.") if isinstance(v, dict) and k != "options" else [prefix + k]

    for cls in (AERunConfig, LDMRunConfig):
        for key in keys(to_dict(cls())):
            assert f"| `{key}` |" in text, f"{key} is missing from the reference"


def test_the_generator_check_mode_accepts_the_committed_file():
    r = subprocess.run([sys.executable, str(ROOT / "docs" / "make_config_reference.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_design_layout_names_only_files_that_exist_and_every_library_module():
    text = (ROOT / "docs" / "design.md").read_text()
    block = text.split("## Layout", 1)[1].split("```")[1]
    named, parent = set(), ""
    for line in block.splitlines():
        if not line.strip() or not (token := line.split()[0]).endswith((".py", "/")):
            continue  # continuation lines of a description
        path = parent + token if line.startswith("  ") else token
        parent = token if not line.startswith("  ") else parent
        named.add(path.rstrip("/"))
        assert (ROOT / path).exists(), f"docs/design.md names {path}, which does not exist"
    modules = {f"latentdiff/{p.name}" for p in (ROOT / "latentdiff").glob("*.py") if p.name != "__init__.py"}
    assert modules <= named, f"docs/design.md's layout leaves out {sorted(modules - named)}"


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def prose(markdown: str) -> str:
    """A document without its code blocks: there a "#" is a comment and brackets are commands, not links."""
    return re.sub(r"```.*?```", "", markdown, flags=re.S)


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors for a document's headings: lower case, punctuation but "-" and "_" dropped, spaces "-"."""
    return {re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            for line in prose(markdown).splitlines() if line.startswith("#")}


@pytest.mark.parametrize("doc", ["README.md", *(f"docs/{p.name}" for p in sorted((ROOT / "docs").glob("*.md")))])
def test_every_relative_link_and_image_of_the_docs_points_at_a_file_and_heading_that_exist(doc):
    for target in LINK.findall(prose((ROOT / doc).read_text())):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        file = (ROOT / doc).parent / path if path else ROOT / doc
        assert file.exists(), f"{doc} links to {target}, which does not exist (relative to {Path(doc).parent}/)"
        if anchor and file.suffix == ".md":
            assert anchor in anchors(file.read_text()), f"{doc} links to {target}: no such heading in {file.name}"
