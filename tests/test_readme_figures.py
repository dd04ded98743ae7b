"""Every figure in the README's Results section equals its record under bench/results/ (see readme_figures.py)."""

import json
import re
from pathlib import Path

import pytest
from readme_figures import FIGURES, RESULTS, SETTINGS, V

ROOT = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"\d+(?:\.\d+)?")


def squash(text: str) -> str:
    return " ".join(text.split())


def results_section() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Results\n")
    return readme[start:readme.index("\n## ", start + 1)]


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


@pytest.mark.parametrize("figure", FIGURES, ids=[f.text[:60] for f in FIGURES])
def test_each_readme_figure_equals_its_json_record(figure):
    text = squash(filled(figure))
    assert text in squash(results_section()), f"README differs from its record; expected:\n{text}"


def test_every_record_is_committed_named_in_the_readme_and_says_where_it_was_made():
    section = results_section()
    for file in sorted({v.file for f in FIGURES for v in f.values}):
        data = json.loads((RESULTS / file).read_text())
        assert re.match(r"2026-(11-2[89]|12-01) ", data["date"]), (file, data["date"])  # the section's dates
        assert "2 cores" in data["machine"] and "torch 2.14.1" in data["machine"] and "no GPU" in data["machine"]
        stem = file.removesuffix(".json")
        named = file in section or re.sub(r"seed\d", "seed{0,1,2}", stem) + ".json" in section
        assert named, f"the README does not name the record {file}"


def test_every_number_in_the_results_section_is_a_recorded_figure_or_a_setting():
    covered = {n for f in FIGURES for n in NUMBER.findall(filled(f))}
    section = results_section()
    for command in re.findall(r"`[^`]*`", section):  # commands and file names hold settings, not results
        section = section.replace(command, " ")
    unknown = sorted({n for n in NUMBER.findall(section)} - covered - SETTINGS, key=float)
    assert not unknown, f"numbers in README Results with no JSON record (add a Figure) nor a setting: {unknown}"
