"""Every results figure of the docs equals its record under bench/results/ (see readme_figures.py): the README's
results overview and docs/results.md, each figure checked in the document it lives in."""

import json
import re
from pathlib import Path

import pytest
from readme_figures import DOCS, FIGURES, README, RESULTS, RESULTS_DOC, SETTINGS, V

ROOT = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"\d+(?:\.\d+)?")


def squash(text: str) -> str:
    return " ".join(text.split())


def results_section(doc: str) -> str:
    """The README's "## Results" section (to the next "## " heading), or the whole of docs/results.md."""
    text = (ROOT / doc).read_text()
    if doc != README:
        return text
    start = text.index("## Results\n")
    return text[start:text.index("\n## ", start + 1)]


def resolve(value: V):
    data = json.loads((RESULTS / value.file).read_text())
    node = data
    for step in value.path:
        if isinstance(step, dict):
            matches = [item for item in node if all(item.get(k) == v for k, v in step.items())]
            assert matches, f"{value.file}: no row with {step}"
            node = matches[0]
        else:
            node = node[step]
    return value.fn(node) if value.fn else node


def filled(figure) -> str:
    return figure.text.format(*(v.fmt(resolve(v)) for v in figure.values))


@pytest.mark.parametrize("figure", FIGURES, ids=[f"{f.doc}: {f.text[:60]}" for f in FIGURES])
def test_each_figure_equals_its_json_record_in_its_document(figure):
    assert figure.doc in DOCS, f"{figure.doc} is not one of the documents checked: {DOCS}"
    text = squash(filled(figure))
    assert text in squash(results_section(figure.doc)), f"{figure.doc} differs from its record; expected:\n{text}"


def test_every_record_is_committed_named_in_the_results_document_and_says_where_it_was_made():
    named_in = results_section(RESULTS_DOC)  # the full record: every JSON a figure of any document comes from
    for file in sorted({v.file for f in FIGURES for v in f.values}):
        data = json.loads((RESULTS / file).read_text())
        assert re.match(r"2026-(11-2[89]|12-0[14]) ", data["date"]), (file, data["date"])  # the section's dates
        assert "2 cores" in data["machine"] and "torch 2.14.1" in data["machine"] and "no GPU" in data["machine"]
        stem = file.removesuffix(".json")
        named = file in named_in or re.sub(r"seed\d", "seed{0,1,2}", stem) + ".json" in named_in
        assert named, f"{RESULTS_DOC} does not name the record {file}"


@pytest.mark.parametrize("doc", DOCS)
def test_every_number_in_a_results_section_is_a_recorded_figure_of_it_or_a_setting(doc):
    figures = [f for f in FIGURES if f.doc == doc]
    assert figures, f"no figure lives in {doc}"
    covered = {n for f in figures for n in NUMBER.findall(filled(f))}
    section = re.sub(r"\]\([^)]*\)", "]", results_section(doc))  # link and image targets: file names
    for command in re.findall(r"`[^`]*`", section):  # commands and file names hold settings, not results
        section = section.replace(command, " ")
    unknown = sorted({n for n in NUMBER.findall(section)} - covered - SETTINGS, key=float)
    assert not unknown, f"numbers in {doc}'s results with no JSON record (add a Figure) nor a setting: {unknown}"


def test_quick_start_comment_states_the_recorded_minutes_of_the_quick_start():
    """The quick start's own line ("N minutes of training on 2 CPU cores") is the recorded wall time, rounded."""
    from readme_figures import QUICK
    wall = json.loads((RESULTS / QUICK).read_text())["rows"][0]["wall min"]
    said = re.search(r"\((\d+) minutes of training on 2 CPU cores", (ROOT / README).read_text())
    assert said, "README quick start: no '(N minutes of training on 2 CPU cores' line"
    assert int(said.group(1)) == round(wall), f"README says {said.group(1)} min, quickstart.json {wall:.1f}"
