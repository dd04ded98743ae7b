"""The committed records under bench/results/ name no machine's folders: bench/common.write_results writes every path
under the checkout relative to it, and the bench scripts that read a path back resolve it against the checkout."""

import json
import os
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
def test_budget_curve_keeps_earlier_points_of_the_same_folder_named_relative_or_absolute(recorded):
    from budget_curve import with_earlier_points

    earlier = {"settings": {"out_dir": recorded}, "points": [{"kind": "vae", "budget_min": 10.0, "from": "earlier"},
                                                             {"kind": "vae", "budget_min": 20.0, "from": "earlier"}]}
    earlier = json.loads(json.dumps(earlier))  # as read back from the JSON
    now = [{"kind": "vae", "budget_min": 20.0, "from": "now"}]
    kept = with_earlier_points(earlier, (ROOT / "runs" / "bench" / "budget_curve_x").resolve(), now)
    assert [(p["budget_min"], p["from"]) for p in kept] == [(10.0, "earlier"), (20.0, "now")]
    other = with_earlier_points(earlier, (ROOT / "runs" / "bench" / "budget_curve_y").resolve(), now)
    assert other == now  # another sweep's folder: its points are not this sweep's


def curve_row(kind, variant, ae_steps, ldm_steps, fd, budget=20.0):
    return {"kind": kind, "budget_min": budget, "variant": variant, "ae_steps": ae_steps, "ldm_steps": ldm_steps,
            "fd": fd}


def test_autoguided_rows_enter_the_curve_only_where_its_point_has_their_steps_and_replace_their_own(tmp_path):
    """bench/autoguidance.py's rows are retrained curve points: one is added where the curve's variant it retrains
    has the same autoencoder and stage-two steps, replaces an earlier row of its kind, budget and variant, and is
    refused (with a note naming it) where the steps differ or the point is missing; the curve's own rows stay."""
    from budget_curve import add_autoguided

    own = [curve_row("vae", "dedicated_uncond", 1635, 3260, 1.43),
           curve_row("rae", "dedicated_uncond", 1437, 3095, 1.95), curve_row("vae", "cond_model_cfg", 1635, 2969, 0.76)]
    old = curve_row("vae", "dedicated_uncond_autoguided", 1635, 3260, 9.99)
    path = tmp_path / "budget_curve_x.json"
    path.write_text(json.dumps({"rows": [*own, old], "plot": None}))
    new = [curve_row("vae", "dedicated_uncond_autoguided", 1635, 3260, 1.16),
           curve_row("rae", "dedicated_uncond_autoguided", 1437, 3000, 1.47),  # the curve's RAE has 3095 steps
           curve_row("vae", "cond_model_cfg_autoguided", 1635, 2969, 0.74, budget=45.0)]  # no 45-minute point
    notes = add_autoguided(path, new)
    rows = json.loads(path.read_text())["rows"]
    assert rows == [*own, new[0]]
    assert len(notes) == 2 and notes[0].startswith("dedicated_uncond_autoguided of rae at 20 CPU minutes not added")
    assert "45 CPU minutes" in notes[1]
    assert add_autoguided(tmp_path / "missing.json", new)[0].startswith("missing.json does not exist")


def test_adding_autoguided_rows_holds_the_curves_lock_from_read_to_write(tmp_path, monkeypatch):
    """The VAE's and the RAE's autoguidance benches run at once and both add rows to the curve's JSON: between
    reading it and writing it back, add_autoguided holds the folder's lock (common.locked), so the other bench
    cannot write in between (its rows would be lost) and waits; the file is then the old one or the new one, never
    half of one (written beside it, then renamed)."""
    fcntl = pytest.importorskip("fcntl")
    import budget_curve

    path = tmp_path / "budget_curve_x.json"
    path.write_text(json.dumps({"rows": [curve_row("vae", "dedicated_uncond", 1635, 3260, 1.43)], "plot": None}))
    probed = []

    def same_steps_while_another_bench_tries_to_write(new, rows):
        fd = os.open(tmp_path, os.O_RDONLY)  # another writer's own handle on the folder
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        probed.append(True)
        return real(new, rows)

    real = budget_curve.same_steps
    monkeypatch.setattr(budget_curve, "same_steps", same_steps_while_another_bench_tries_to_write)
    row = curve_row("vae", "dedicated_uncond_autoguided", 1635, 3260, 1.16)
    assert budget_curve.add_autoguided(path, [row]) == [] and probed
    assert json.loads(path.read_text())["rows"][-1] == row
    assert sorted(p.name for p in tmp_path.iterdir()) == ["budget_curve_x.json"]  # no temporary file left


def test_a_rerun_curve_keeps_the_autoguided_rows_whose_variant_kept_its_steps():
    from budget_curve import same_steps

    rows = [curve_row("vae", "dedicated_uncond", 1635, 3260, 1.43),
            curve_row("vae", "cond_model_cfg", 1635, 2969, 0.76)]
    same = curve_row("vae", "dedicated_uncond_autoguided", 1635, 3260, 1.16)
    moved = curve_row("vae", "cond_model_cfg_autoguided", 1635, 3000, 0.74)  # the curve's cond model: 2969 steps
    other_ae = curve_row("vae", "dedicated_uncond_autoguided", 1600, 3260, 1.2, budget=20.0)
    assert same_steps([same, moved], rows) == ([same], [moved])
    assert same_steps([other_ae], rows) == ([], [other_ae])


def test_the_curves_autoguidance_scales_are_the_best_measured_at_its_20_minute_vae_point():
    """The w_a of the budget curve's autoguided rows is chosen once, at the 20-minute VAE point, for every budget."""
    from autoguidance import CURVE_SCALES

    for model, record in (("uncond", "vae"), ("cond", "vae_cond")):
        rows = json.loads((RESULTS / f"autoguidance_fashion_mnist_20min_{record}_guide0.25.json").read_text())["rows"]
        assert min(rows, key=lambda r: r["fd"])["w_a"] == CURVE_SCALES[model]
