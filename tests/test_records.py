"""The committed records under bench/results/ name no machine's folders: bench/common.write_results writes every path
under the checkout relative to it, and the bench scripts that read a path back resolve it against the checkout."""

import json
import re
import sys

import pytest
from readme_figures import RESULTS

ROOT = RESULTS.parents[1]
sys.path.insert(0, str(ROOT / "bench"))

# an absolute path where a token starts (POSIX "/x", home "~/x", a drive letter "C:\x" or "C:/x", UNC "\\host"),
# or a machine's usual top folders anywhere in a string
ABSOLUTE = re.compile(r"(?:^|[\s=:,;'\"(\[])(?:/(?!/)|~/|[A-Za-z]:[\\/])|/(?:work|home|tmp|Users|root|mnt|scratch)/"
                      r"|\\\\")


def strings(node):
    """Every key and string value of a JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)
    elif isinstance(node, str):
        yield node


@pytest.mark.parametrize("text", ["/work/main/runs/x", "ae.run=/srv/runs/x", "C:\\runs\\x", "D:/runs/x",
                                  "python bench/x.py --out-dir /tmp/x", "~/runs/x", "runs//work/x"])
def test_the_absolute_path_pattern_catches_each_form(text):
    assert ABSOLUTE.search(text)


@pytest.mark.parametrize("text", ["runs/bench/x", "ours/diffusers", "latent/pixel memory", "N(0, 1/A)",
                                  "dpm_solver++:10 η=0 w=2 in [0, 0.6]", "x86_64, 2 cores", "https://example.org/a"])
def test_the_absolute_path_pattern_passes_relative_text(text):
    assert not ABSOLUTE.search(text)


def test_no_committed_record_holds_an_absolute_path():
    files = sorted(RESULTS.glob("*.json"))
    assert len(files) > 40  # the committed records, not an empty folder
    found = [(f.name, s) for f in files for s in strings(json.loads(f.read_text())) if ABSOLUTE.search(s)]
    assert not found, f"absolute paths in committed records (write them with bench/common.write_results): {found[:5]}"


def test_write_results_writes_paths_under_the_checkout_relative_to_it(tmp_path, monkeypatch):
    from common import write_results

    monkeypatch.setenv("LATENTDIFF_BENCH_RESULTS", str(tmp_path))
    monkeypatch.setattr(sys, "argv", [str(ROOT / "bench" / "x.py"), "--out-dir", str(ROOT / "runs" / "bench")])
    extra = {"run": str(ROOT / "runs" / "a"), "checkout": str(ROOT), "overrides": ["--config", f"ae.run={ROOT}/runs/b"],
             "elsewhere": str(tmp_path / "runs"), "sibling": f"{ROOT}2/runs", "number": 1.5, "rows_of": (1, None)}
    out = write_results("paths", [{"run": str(ROOT / "runs" / "c")}], ["run"], extra=extra)
    data = json.loads(out.read_text())
    assert data["command"] == "python bench/x.py --out-dir runs/bench"
    assert data["rows"] == [{"run": "runs/c"}]
    assert {k: data[k] for k in extra} == {
        "run": "runs/a", "overrides": ["--config", "ae.run=runs/b"], "checkout": ".",
        # outside the checkout, a longer name, not a string: as they were
        "elsewhere": str(tmp_path / "runs"), "sibling": f"{ROOT}2/runs", "number": 1.5, "rows_of": [1, None]}


@pytest.mark.parametrize("recorded", ["runs/bench/budget_curve_x", str(ROOT / "runs" / "bench" / "budget_curve_x")])
def test_budget_curve_keeps_earlier_points_of_the_same_folder_named_relative_or_absolute(tmp_path, recorded):
    from budget_curve import with_earlier_points

    earlier = {"settings": {"out_dir": recorded}, "points": [{"kind": "vae", "budget_min": 10.0, "from": "earlier"},
                                                             {"kind": "vae", "budget_min": 20.0, "from": "earlier"}]}
    path = tmp_path / "budget_curve_x.json"
    path.write_text(json.dumps(earlier))
    now = [{"kind": "vae", "budget_min": 20.0, "from": "now"}]
    kept = with_earlier_points(path, (ROOT / "runs" / "bench" / "budget_curve_x").resolve(), now)
    assert [(p["budget_min"], p["from"]) for p in kept] == [(10.0, "earlier"), (20.0, "now")]
    other = with_earlier_points(path, (ROOT / "runs" / "bench" / "budget_curve_y").resolve(), now)
    assert other == now  # another sweep's folder: its points are not this sweep's
