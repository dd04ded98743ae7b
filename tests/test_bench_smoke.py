"""The bench/ scripts run against the current library API, on tiny runs and in their --quick modes.

They are what the README's tables come from; this keeps them from drifting out of step with the code
(a keyword the library no longer takes, a renamed result field). Results go to a temporary folder.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_end_to_end import ROOT, runs  # noqa: F401  (the tiny shapes runs fixture)


def bench(script, *args, results):
    env = {**os.environ, "LATENTDIFF_BENCH_RESULTS": str(results), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "bench" / script), *map(str, args)], capture_output=True,
                       text=True, env=env)
    assert r.returncode == 0, f"bench/{script} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r.stdout


def test_attribute_sampling_with_edits_writes_every_row(runs, tmp_path):  # noqa: F811
    out, _ = runs
    bench("attribute_sampling.py", "--run", out / "shapes_ldm_kl", "--per-value", 1, "--max", 36, "--steps", 2,
          "--edit-strength", 0.3, "--edit-mode", "sdedit", "invert", "--edit-num", 4, "--batch-size", 64,
          results=tmp_path)
    result = json.loads((tmp_path / "attribute_sampling_shapes_ldm_kl.json").read_text())
    asked = [row["asked"] for row in result["rows"]]
    assert asked == ["all", "color", "size", "shape", "none", "edit color sdedit s=0.3", "edit color invert s=0.3"]
    assert 0 <= result["rows"][0]["joint"] <= 1 and "kept shape" in result["rows"][-1]


def test_quickstart_bench_runs_the_quick_start_and_judges_its_grid_against_what_was_asked(tmp_path):
    """bench/quickstart.py --tiny: the whole quick start (both stages, the guided grid: one row per colour, all
    triangles), its steps read back from the runs, and the accuracies recomputed here from the judge it cached."""
    import torch

    from latentdiff.metrics.classifier import load_or_train_classifier

    out = tmp_path / "qs"
    stdout = bench("quickstart.py", "--tiny", "--out-dir", out, results=tmp_path)
    assert "TensorBoard" in stdout
    npz = np.load(out / "shapes_ldm_kl" / "samples" / "triangles_by_color.npz")
    asked = torch.from_numpy(npz["attributes"]).long()
    names = list(npz["attribute_names"])
    assert npz["images"].shape[0] == 48 and set(asked[:, names.index("shape")].tolist()) == {2}  # all triangles
    assert sorted(set(asked[:, names.index("color")].tolist())) == list(range(6))  # one row per colour
    row = json.loads((tmp_path / "quickstart_tiny.json").read_text())["rows"][0]
    assert (row["ae steps"], row["ldm steps"], row["n"]) == (20, 20, 48)
    state = torch.load(out / "shapes_ldm_kl" / "checkpoints" / "last.pt", weights_only=True, mmap=True)
    judge, _, _ = load_or_train_classifier(state["config"]["data"], out / "classifiers", steps=20)  # the cached one
    right = judge.judge(torch.from_numpy(npz["images"]))[1] == asked
    for a, name in enumerate(names):
        assert row[f"acc {name}"] == pytest.approx(right[:, a].double().mean().item())
    assert row["joint"] == pytest.approx(right.all(1).double().mean().item())


def test_quality_vs_steps_scores_each_setting(runs, tmp_path):  # noqa: F811
    out, _ = runs
    bench("quality_vs_steps.py", "--run", out / "shapes_ldm_kl", "--num", 16, "--settings", "ddim:2", "ddpm:3",
          "dpm_solver++:3", results=tmp_path)
    result = json.loads((tmp_path / "quality_vs_steps_shapes_ldm_kl_ddim2_ddpm3_dpmsolverpp3.json").read_text())
    rows = result["rows"]
    assert [(r["sampler"], r["steps"]) for r in rows] == [("ddim", 2), ("ddpm", 3), ("dpm_solver++", 3)]
    assert all(r["fd"] >= 0 for r in rows)
    # every result carries where and how it was made
    for key in ("date", "machine", "torch", "git_commit", "command"):
        assert result[key], key
    assert result["command"].startswith("python ") and "quality_vs_steps.py" in result["command"]
    assert "--settings ddim:2 ddpm:3" in result["command"]


def test_autoencoder_bench_trains_the_recipes_steps_into_the_recipes_run_folder(tmp_path):
    # the README's next command (train_diffusion.py with the ldm recipe) reads runs/<the ae recipe's name>
    results, out = tmp_path / "results", tmp_path / "runs"
    tiny = ["train.steps=3", "data.train_size=64", "data.test_size=16", "eval_samples=8", "train.batch_size=8",
            "train.eval_every=3", "train.image_every=3", "model.base_channels=8", "train.max_minutes=null"]
    bench("autoencoder.py", "--config", ROOT / "configs/shapes/ae_kl.yaml", "--out-dir", out, *tiny, results=results)
    result = json.loads((results / "autoencoder_shapes_ae_kl.json").read_text())
    assert result["rows"][0]["steps"] == 3 and result["run"] == str(out / "shapes_ae_kl")
    assert (out / "shapes_ae_kl" / "checkpoints" / "last.pt").exists()
    assert result["rows"][0]["test_psnr_db"] > 0
    env = {**os.environ, "LATENTDIFF_BENCH_RESULTS": str(results)}
    again = subprocess.run([sys.executable, str(ROOT / "bench" / "autoencoder.py"), "--config",
                            str(ROOT / "configs/shapes/ae_kl.yaml"), "--out-dir", str(out), *tiny],
                           capture_output=True, text=True, env=env)
    assert again.returncode == 2 and "already holds a run" in again.stderr


def test_quality_vs_steps_names_its_file_by_settings_and_seed():
    sys.path.insert(0, str(ROOT / "bench"))
    from quality_vs_steps import DEFAULT_SETTINGS, result_name

    run = "runs/fashion_mnist_ldm_kl"
    names = [result_name(run, DEFAULT_SETTINGS, None), result_name(run, DEFAULT_SETTINGS, 1),
             result_name(run, ["ddpm:1000"], 0), result_name(run, ["ddpm:1000"], 1),
             result_name(run, ["ddim:50:1"], None)]
    assert names == ["quality_vs_steps_fashion_mnist_ldm_kl", "quality_vs_steps_fashion_mnist_ldm_kl_seed1",
                     "quality_vs_steps_fashion_mnist_ldm_kl_ddpm1000_seed0",
                     "quality_vs_steps_fashion_mnist_ldm_kl_ddpm1000_seed1",
                     "quality_vs_steps_fashion_mnist_ldm_kl_ddim50eta1"]


@pytest.mark.parametrize("args, words", [(["--settings", "euler:10"], "write SAMPLER:STEPS"),
                                         (["--guidance-interval", "0.7", "0.1"], "0 <= LO < HI <= 1")])
def test_quality_vs_steps_refuses_bad_settings_in_one_line_before_loading(args, words):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "quality_vs_steps.py"), "--run", "/nonexistent", *args],
                       capture_output=True, text=True)
    assert r.returncode == 2 and words in r.stderr.strip().splitlines()[-1], r.stderr


@pytest.mark.parametrize("script", ["sampling_speed.py", "denoiser_speed.py"])
def test_speed_benches_against_diffusers_run_quick(script, tmp_path):
    pytest.importorskip("diffusers", reason="the speed benches compare with diffusers (requirements-bench.txt)")
    stdout = bench(script, "--quick", results=tmp_path)
    assert "|" in stdout and len(list(tmp_path.glob("*.json"))) == 1


def test_bound_estimator_scores_the_exact_sum_and_both_monte_carlo_estimators(runs, tmp_path):  # noqa: F811
    """Each estimator twice on the same latents: the exact sum's two means differ only by its x_t draws, the
    stratified importance sampler's per-image noise is below uniform draws' (the sum lies near t = 1); bad input
    is one line and exit 2."""
    out, _ = runs
    run = out / "shapes_ldm_kl"
    bench("bound_estimator.py", "--run", run, "--examples", 16, "--timesteps", 10, results=tmp_path)
    result = json.loads((tmp_path / "bound_estimator_shapes_ldm_kl.json").read_text())
    exact, stratified, uniform = result["rows"]
    assert result["examples"] == 16 and exact["timesteps"] == result["T"] and stratified["timesteps"] == 10
    assert "stratified" in stratified["estimator"] and "uniform" in uniform["estimator"]
    assert exact["cpu_vs_exact"] == 1 and stratified["cpu_s"] < exact["cpu_s"]
    assert stratified["per_image_sd"] < uniform["per_image_sd"]
    assert abs(exact["bpd"] - exact["bpd_other_draws"]) < 4 * exact["per_image_sd"]
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "bound_estimator.py"), "--run", run, "--timesteps",
                        str(10**6)], capture_output=True, text=True, env={**os.environ,
                                                                          "LATENTDIFF_BENCH_RESULTS": str(tmp_path)})
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--timesteps" in r.stderr


def test_inpainting_quick_reports_kept_psnr_and_the_judge(runs, tmp_path):  # noqa: F811
    out, _ = runs
    bench("inpainting.py", "--run", out / "shapes_ldm_kl", "--quick", "--sampler", "ddpm", "--resample", 1, 2,
          results=tmp_path)
    result = json.loads((tmp_path / "inpainting_shapes_ldm_kl.json").read_text())
    assert [(r["request"], r["resample"]) for r in result["rows"]] == \
        [("own", 1), ("other color", 1), ("own", 2), ("other color", 2)]
    for row in result["rows"]:
        assert row["n"] == 8 and 0 <= row["joint"] <= row["judge color"] <= 1
        assert row["psnr kept"] > 0 and row["psnr kept recon"] > 0
        assert 0 <= row["coherent"] <= min(row["one shape"], row["joint"])
    assert result["sampler"] == "ddpm" and result["steps"] == 3


def test_budget_curve_quick_scores_every_variant_from_the_trained_steps_and_resumes(tmp_path):
    """Both autoencoder kinds, both stage-two models, every scored set over two seeds; the steps in the JSON are
    the steps in the run folders' checkpoints; a sweep run in two pieces (one kind, then the other) keeps both
    in one JSON; bench/autoguidance.py's row joins it, its unguided FD the curve's own; a rerun of the whole trains
    and samples nothing again and keeps that row."""
    import importlib.util
    from pathlib import Path

    import torch

    plot = importlib.util.find_spec("matplotlib") is not None  # requirements-bench.txt; CI has only -dev
    args = ["--quick", "--out-dir", tmp_path / "runs", *([] if plot else ["--no-plot"])]
    bench("budget_curve.py", *args, "--kinds", "vae", results=tmp_path)
    bench("budget_curve.py", *args, "--kinds", "rae", results=tmp_path)
    result = json.loads((tmp_path / "budget_curve_shapes_quick.json").read_text())
    assert [p["command"].split("--kinds ")[1] for p in result["points"]] == ["vae", "rae"]
    variants = ["dedicated_uncond", "cond_model_uncond", "cond_model_cfg", "cond_model_drawn", "gmm", "reconstructions",
                "data"]
    assert [(r["kind"], r["variant"]) for r in result["rows"]] == [(k, v) for k in ("vae", "rae") for v in variants]
    for row in result["rows"]:
        assert row["fd"] >= 0 and row["fd_min"] <= row["fd"] <= row["fd_max"] and len(row["fd_seeds"]) == 2
        assert 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1 and row["cpu_min"] > 0
    assert all(0 <= r["class_accuracy"] <= 1 for r in result["rows"] if r["variant"] == "cond_model_cfg")
    sampled_from = {"dedicated_uncond": "uncond", "cond_model_uncond": "cond", "cond_model_cfg": "cond",
                    "cond_model_drawn": "cond"}
    checkpoints = {}
    for point in result["points"]:
        assert set(point["runs"]) == {"ae", "uncond", "cond"}
        trained = {}
        for stage, run in point["runs"].items():
            path = Path(run["run"]) / "checkpoints" / "last.pt"
            checkpoints[path] = path.stat().st_mtime_ns
            trained[stage] = torch.load(path, weights_only=True)["step"]
            assert run["steps_asked"] == run["steps_trained"] == trained[stage] == 8 and run["cpu_s"] > 0
        for row in (r for r in result["rows"] if r["kind"] == point["kind"]):
            assert row["ae_steps"] == trained["ae"]
            assert row["ldm_steps"] == (trained[sampled_from[row["variant"]]] if row["variant"] in sampled_from
                                        else None)
    assert (tmp_path / "budget_curve_shapes_quick.png").stat().st_size > 1000 if plot else result["plot"] is None

    # bench/autoguidance.py retrains the VAE point with a guide snapshot and adds its w_a = 1.5 row to the curve
    bench("autoguidance.py", "--quick", "--scales", 1, 1.5, "--out-dir", tmp_path / "runs", results=tmp_path)
    guided = json.loads((tmp_path / "budget_curve_shapes_quick.json").read_text())["rows"]
    scored = json.loads((tmp_path / "autoguidance_shapes_quick.json").read_text())["rows"]
    assert guided[:len(result["rows"])] == result["rows"]
    [row] = guided[len(result["rows"]):]
    assert (row["kind"], row["variant"], row["w_a"], row["ae_steps"], row["ldm_steps"]) == (
        "vae", "dedicated_uncond_autoguided", 1.5, 8, 8)
    assert row["fd_seeds"] == scored[1]["fd_seeds"] and row["fd"] == scored[1]["fd"] != scored[0]["fd"]
    own = next(r for r in result["rows"] if (r["kind"], r["variant"]) == ("vae", "dedicated_uncond"))
    assert row["unguided_fd"] == scored[0]["fd"] == own["fd_seeds"][0]  # retrained with a guide: the same model

    again = bench("budget_curve.py", *args, results=tmp_path)
    assert "training " not in again and again.count("done already") == 6
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == checkpoints
    assert json.loads((tmp_path / "budget_curve_shapes_quick.json").read_text())["rows"] == guided  # kept


def test_budget_curve_sizes_steps_from_the_calibrated_cost_per_step_and_fixed_cost():
    sys.path.insert(0, str(ROOT / "bench"))
    from budget_curve import fit_calibration, schedule_overrides, steps_for

    fit = fit_calibration([(20, 4.0 + 20 * 0.5), (80, 4.0 + 80 * 0.5)])
    assert fit["per_step_s"] == pytest.approx(0.5) and fit["fixed_s"] == pytest.approx(4.0)
    assert steps_for(64.0, fit) == 120 and steps_for(63.9, fit) == 119  # 4 s fixed + 120 steps of 0.5 s
    with pytest.raises(ValueError, match="fixed cost"):
        steps_for(3.0, fit)
    with pytest.raises(ValueError, match="do not grow"):
        fit_calibration([(20, 9.0), (80, 8.0)])
    recipe = {"train.steps": 3000, "train.warmup_steps": 200, "loss.kl_warmup_steps": 1000, "bound_every": 6000}
    assert schedule_overrides(recipe, 600) == ["train.steps=600", "train.warmup_steps=40", "loss.kl_warmup_steps=200",
                                               "train.eval_every=600", "train.image_every=600", "bound_every=601"]


def test_stage_two_recipes_quick_trains_each_variant_with_its_overrides_and_scores_each_sampler(tmp_path):
    """Two variants on one tiny autoencoder, two sampler settings: each variant's run carries its overrides and
    the same steps; each row was sampled with the setting it names; the references are scored once; a rerun
    trains and samples nothing again; a variant that does not exist is one line, exit 2, before any work."""
    from latentdiff.checkpoints import load_checkpoint

    args = ["--quick", "--variants", "recipe", "v_cosine", "--samplers", "recipe", "ddim:3:1", "--out-dir",
            tmp_path / "runs", "--curve-dir", tmp_path / "curve"]
    bench("stage_two_recipes.py", *args, results=tmp_path)
    result = json.loads((tmp_path / "stage_two_recipes_shapes_vae_20min_uncond_quick.json").read_text())
    rows = result["rows"]
    assert [(r["variant"], r.get("sampling")) for r in rows] == [
        ("recipe", "ddim:4 η=1"), ("gmm", None), ("reconstructions", None), ("recipe", "ddim:3 η=1"),
        ("v_cosine", "ddim:4 η=1"), ("v_cosine", "ddim:3 η=1")]  # the shapes recipe: η = 1; QUICK_LDM: 4 steps
    for name, schedule, prediction in (("recipe", "linear", "eps"), ("v_cosine", "cosine", "v")):
        ckpt = load_checkpoint(tmp_path / "runs" / name / "checkpoints" / "last.pt")
        assert ckpt["step"] == 8 and ckpt["config"]["diffusion"]["beta_schedule"] == schedule
        assert ckpt["config"]["diffusion"]["prediction"] == prediction
        assert ckpt["config"]["conditioning"]["enabled"] is False  # --model uncond: trained without attributes
    for row in rows:
        assert len(row["fd_seeds"]) == 2 and row["fd_min"] <= row["fd"] <= row["fd_max"]
        if "sampling" in row:
            assert row["train_steps"] == 8 and row["cpu_min"] > 0
    saved = json.loads((tmp_path / "runs" / "recipe" / "eval_seed1_steps3_samplerddim_eta1.json").read_text())
    assert (saved["settings"]["steps"], saved["settings"]["eta"], saved["settings"]["seed"]) == (3, 1.0, 1)
    assert saved["samples"]["ldm"]["fd"] == rows[3]["fd_seeds"][1]

    again = bench("stage_two_recipes.py", *args, results=tmp_path)
    assert again.count("done already") == 3 and "steps (" not in again and "sampling 16 with" not in again
    assert json.loads((tmp_path / "stage_two_recipes_shapes_vae_20min_uncond_quick.json").read_text())["rows"] == rows

    r = subprocess.run([sys.executable, str(ROOT / "bench" / "stage_two_recipes.py"), "--variants", "recipe", "nope",
                        "--out-dir", tmp_path / "bad"], capture_output=True, text=True)
    assert r.returncode == 2 and "nope: not a named variant" in r.stderr and not (tmp_path / "bad").exists()


def test_stage_two_recipes_reads_sampler_settings_and_refuses_malformed_ones():
    import argparse

    sys.path.insert(0, str(ROOT / "bench"))
    from stage_two_recipes import parse_sampler

    assert parse_sampler("recipe") == {}
    assert parse_sampler("ddim:50:1") == {"sampler": "ddim", "steps": 50, "eta": 1.0}
    assert parse_sampler("dpm_solver++:10:-:3") == {"sampler": "dpm_solver++", "steps": 10, "guidance_scale": 3.0}
    assert parse_sampler("dpm_solver++:10:-:3:0.1-0.7") == {"sampler": "dpm_solver++", "steps": 10,
                                                             "guidance_scale": 3.0, "guidance_interval": [0.1, 0.7]}
    for bad in ("ddim", "ddim:x", "euler:10", "ddim:0", "ddim:5:1:2:3", "ddim:5:1:2:0.7-0.1", "ddim:5:1:2:0-1:9"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_sampler(bad)


def test_stage_two_recipes_tag_names_the_results_but_not_the_runs_they_share():
    sys.path.insert(0, str(ROOT / "bench"))
    from stage_two_recipes import parse_args

    plain, tagged = parse_args(["--model", "cond"]), parse_args(["--model", "cond", "--tag", "ema"])
    assert plain.name == "stage_two_recipes_fashion_mnist_vae_20min_cond"
    assert tagged.name == "stage_two_recipes_fashion_mnist_vae_20min_cond_ema"
    assert tagged.out_dir == plain.out_dir and tagged.out_dir.name == plain.name  # the variants' runs are reused
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "stage_two_recipes.py"), "--tag", "../x"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--tag '../x'" in r.stderr.strip().splitlines()[-1]


def test_stage_two_recipes_spelt_out_own_sampling_is_the_runs_own_evaluation(tmp_path):
    """A variant trained with the guidance interval in its config, asked for that interval spelt out, is scored by
    its own evaluation (eval_seed<K>.json), as a run without it is scored at the interval asked."""
    sys.path.insert(0, str(ROOT / "bench"))
    from stage_two_recipes import beyond_own, parse_sampler

    from latentdiff.config import LDMRunConfig, dump_yaml, load_config

    recipe = ROOT / "configs" / "fashion_mnist" / "ldm_kl.yaml"
    for name, extra in (("now", []), ("before", ["sample.guidance_interval=null"])):
        (tmp_path / name).mkdir()
        config = load_config(LDMRunConfig, recipe, ["ae.run=null", *extra])
        (tmp_path / name / "config.yaml").write_text(dump_yaml(config))
    asked = parse_sampler("dpm_solver++:10:-:2:0-0.6")
    assert beyond_own(tmp_path / "now", asked) == {} and beyond_own(tmp_path / "now", {}) == {}
    assert beyond_own(tmp_path / "before", asked) == asked
    assert beyond_own(tmp_path / "now", parse_sampler("dpm_solver++:10:-:3:0-0.6"))["guidance_scale"] == 3.0


def test_stage_two_recipes_equal_cpu_gives_a_costlier_variant_the_steps_the_recipe_costs():
    sys.path.insert(0, str(ROOT / "bench"))
    from stage_two_recipes import equal_cpu_steps

    recipe = {"per_step_s": 0.24090448000000006, "fixed_s": 54.6466304}  # the 20-minute VAE point's calibration
    for steps in (1, 3, 2969):  # itself: the same steps, not one short by rounding (1 and 3 would be, unguarded)
        assert equal_cpu_steps(steps, recipe, recipe) == steps
    # twice the cost per step and 6 s more fixed: (54.65 + 2969 * 0.2409 - 60.65) / 0.4818 = 1472.0
    wide = {"per_step_s": 2 * recipe["per_step_s"], "fixed_s": recipe["fixed_s"] + 6.0}
    assert equal_cpu_steps(2969, recipe, wide) == 1472
    assert equal_cpu_steps(2969, recipe, {"per_step_s": recipe["per_step_s"] / 2, "fixed_s": 0.0}) == 6391
    with pytest.raises(ValueError, match="fixed cost"):  # a variant whose fixed part alone exceeds the budget
        equal_cpu_steps(10, recipe, {"per_step_s": 0.1, "fixed_s": 100.0})
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "stage_two_recipes.py"), "--calib-steps", "50", "20"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--calib-steps 50 20" in r.stderr.strip().splitlines()[-1]


def test_budget_curve_refuses_a_run_folder_trained_from_another_recipe_or_overrides_but_not_other_sampling(tmp_path):
    """An edited recipe or other overrides make a new run: the sweep says so instead of reusing the old one. An
    edited sample section does not (sampling is not training): the run is reused and scored at the new settings."""
    sys.path.insert(0, str(ROOT / "bench"))
    import hashlib

    import torch
    from budget_curve import train, training_part

    recipe = tmp_path / "ldm.yaml"
    recipe.write_text("name: x\nsample:\n  steps: 10\n")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"model": {}, "step": 8}, run / "checkpoints" / "last.pt")
    made_from = {"training_sha256": hashlib.sha256(training_part(recipe)).hexdigest(), "overrides": ["a=1"]}
    record = {"steps_asked": 8, "steps_trained": 8, "cpu_s": 1.0, "finished": True, "made_from": made_from}
    (run / "budget_curve_run.json").write_text(json.dumps(record))
    for text, overrides in (("name: y\nsample:\n  steps: 10\n", ["a=1"]),
                            ("name: x\nsample:\n  steps: 10\n", ["a=2"])):
        recipe.write_text(text)
        with pytest.raises(ValueError, match="another recipe .outside its sample section. or other overrides"):
            train("train_diffusion.py", recipe, run, 8, overrides, cap_minutes=1)
    recipe.write_text("name: x\nsample:\n  steps: 20\n  guidance_interval: [0.0, 0.6]\n")
    assert train("train_diffusion.py", recipe, run, 8, ["a=1"], cap_minutes=1) == record  # reused, not retrained
    assert sorted(p.name for p in run.iterdir()) == ["budget_curve_run.json", "checkpoints"]  # nothing written


def test_budget_curve_scores_a_run_at_the_recipes_current_sampling_where_it_differs(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    from budget_curve import recipe_sampling

    recipe = ROOT / "configs" / "fashion_mnist" / "ldm_kl.yaml"
    text, run_config = recipe.read_text(), tmp_path / "config.yaml"
    run_config.write_text(text)
    assert recipe_sampling(recipe, tmp_path) == {}  # a run of the recipe as it is: its own settings
    w3 = text.replace("guidance_scale: 2.0", "guidance_scale: 3.0")
    run_config.write_text(w3.replace("steps: 10\n", "steps: 50\n"))
    assert recipe_sampling(recipe, tmp_path) == {"steps": 10, "guidance_scale": 2.0}
    run_config.write_text(w3.replace("enabled: true", "enabled: false"))
    assert recipe_sampling(recipe, tmp_path) == {}  # an unconditional model does not guide


def test_budget_curve_names_each_stage_whose_cpu_time_strays_from_its_share():
    sys.path.insert(0, str(ROOT / "bench"))
    from budget_curve import off_budget

    shares = {"ae": 60.0, "uncond": 120.0, "cond": 120.0}
    trained = {"ae": {"cpu_s": 66.0}, "uncond": {"cpu_s": 100.0}, "cond": {"cpu_s": 170.0}}  # 1.10x, 0.83x, 1.42x
    lines = off_budget(shares, trained)
    assert len(lines) == 2 and lines[0].startswith("uncond took 1.7 CPU-min for a share of 2.0 (0.83x)")
    assert lines[1].startswith("cond took 2.8 CPU-min for a share of 2.0 (1.42x)")


@pytest.mark.parametrize("model", ["uncond", "cond"])
def test_autoguidance_quick_trains_a_guide_and_scores_each_scale_with_it(tmp_path, model):
    """The stage two keeps its guide at --guide-at of its steps; each w_a is one evaluation whose settings name it
    (w_a = 1: the guide unused), scored against the same reconstructions' floor; a rerun trains and samples nothing."""
    from latentdiff.checkpoints import load_checkpoint

    args = ["--quick", "--model", model, "--scales", 1, 2, "--guide-at", 0.5, "--out-dir", tmp_path / "runs"]
    bench("autoguidance.py", *args, results=tmp_path)
    name = f"autoguidance_shapes_quick{'_cond' if model == 'cond' else ''}.json"
    rows = json.loads((tmp_path / name).read_text())["rows"]
    assert [(r["model"], r["w_a"]) for r in rows] == [(model, 1.0), (model, 2.0)]
    run = tmp_path / "runs" / "quick" / f"vae_ldm_{model}_guide0.5"
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["step"] == 8 and ckpt["guide_step"] == 4 and ckpt["guide"] is not None
    assert ckpt["config"]["conditioning"]["enabled"] is (model == "cond")
    for row in rows:
        saved = json.loads((run / f"eval_seed0_autoguidance_scale{row['w_a']:g}.json").read_text())
        assert saved["settings"]["autoguidance_scale"] == row["w_a"]
        assert row["fd_seeds"] == [saved["samples"]["ldm_conditional" if model == "cond" else "ldm"]["fd"]]
        assert row["reconstructions_fd"] == rows[0]["reconstructions_fd"] and row["ldm_steps"] == 8
        assert (row["class_accuracy"] is not None) is (model == "cond")
    assert rows[0]["fd"] != rows[1]["fd"]  # the guide acts at w_a = 2
    again = bench("autoguidance.py", *args, results=tmp_path)
    assert again.count("done already") == 2 and "sampling 16 with" not in again
    assert json.loads((tmp_path / name).read_text())["rows"] == rows


def test_joint_training_quick_compares_more_stage_two_with_joint_training_from_one_run(runs, tmp_path):  # noqa: F811
    """From the tiny shapes run: (b) copies resumed for more stage-two steps, (c) one joint run kept after each leg,
    (c') the other denoiser objective, (c'') joint then frozen (--quick: half the steps joint); each point's bound
    and FDs are the scores of its own weights."""
    from latentdiff.checkpoints import load_checkpoint

    out, _ = runs
    start = out / "shapes_ldm_kl"
    bench("joint_training.py", "--start", start, "--quick", "--out-dir", tmp_path / "runs", results=tmp_path)
    result = json.loads((tmp_path / "joint_training_shapes_ldm_kl_quick.json").read_text())
    rows = {r["point"]: r for r in result["rows"]}
    assert list(rows) == ["a: two-stage run", "b: +1 min stage two", "b: +2 min stage two",
                          "c: +1 min joint (likelihood)", "c: +2 min joint (likelihood)",
                          "c': +1 min joint (reweighted)", "c'': +1 min, 50% joint then stage two",
                          "c'': +2 min, 50% joint then stage two"]
    first = load_checkpoint(start / "checkpoints" / "last.pt")["step"]
    b2 = tmp_path / "runs" / "stage_two_2min" / "shapes_ldm_kl"
    assert load_checkpoint(b2 / "checkpoints" / "last.pt")["step"] == first + 4
    c1, c2 = (tmp_path / "runs" / f"joint_likelihood_{n}" / "joint_likelihood" for n in (2, 4))
    assert [load_checkpoint(c / "checkpoints" / "last.pt")["step"] for c in (c1, c2)] == [2, 4]
    assert rows["c: +2 min joint (likelihood)"]["cpu_min"] > rows["c: +1 min joint (likelihood)"]["cpu_min"]
    scored = json.loads((c2 / "joint_bench_scores.json").read_text())
    assert rows["c: +2 min joint (likelihood)"]["bpd"] == scored["bound"]["bpd"]
    assert rows["a: two-stage run"]["psnr"] == rows["b: +2 min stage two"]["psnr"]  # stage two leaves the AE alone
    assert rows["a: two-stage run"]["psnr"] != rows["c: +2 min joint (likelihood)"]["psnr"]
    c, b = rows["c: +2 min joint (likelihood)"], rows["b: +2 min stage two"]
    assert result["bound_ratio_c_over_b"] == c["bpd"] / b["bpd"]
    assert result["steps"]["finish"] == {"1.0": {"autoencoder_steps": 1, "steps": 3},
                                         "2.0": {"autoencoder_steps": 2, "steps": 5}}
    # (c'') at 2 min: its first 2 steps are (c)'s first leg, then the autoencoder stays as it was while the denoiser
    # trains on: its raw autoencoder weights are (c)'s after 2 steps, bit for bit, its denoiser's are not
    finish = load_checkpoint(tmp_path / "runs" / "joint_finish0.5_2min_5" / "joint_finish0.5_2min" / "checkpoints"
                             / "last.pt")
    assert finish["step"] == 5
    leg = load_checkpoint(c1 / "checkpoints" / "last.pt")
    for key, value in leg["model"].items():
        same = torch.equal(finish["model"][key], value)
        assert same == (not key.startswith("denoiser.")), key
    assert result["bound_ratio_finish_over_b"] == rows["c'': +2 min, 50% joint then stage two"]["bpd"] / b["bpd"]
    assert (tmp_path / "joint_training_shapes_ldm_kl_quick.png").stat().st_size > 1000
