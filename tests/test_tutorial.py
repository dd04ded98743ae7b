"""docs/tutorial.py runs as a plain script in its TINY mode, its closed-form checks all hold, and it writes
every figure (and both training runs) into the output folder it is given, none into the repository."""

import os
import re
import subprocess
import sys

from test_end_to_end import ROOT

CHECKS = 22  # the checks TINY mode makes; the full mode adds the colour one
FIGURES = ["1_forward_process.png", "2_posterior.png", "3_eps_objective.png", "4_reverse_step.png", "5_samplers.png",
           "6_reconstructions.png", "7_red_triangles.png", "7_edit_red_to_blue.png"]


def test_tutorial_runs_passes_every_check_and_writes_its_figures_into_the_output_folder(tmp_path):
    out, cwd = tmp_path / "out", tmp_path / "elsewhere"
    cwd.mkdir()  # started from another folder: the tutorial finds the repository from its own path
    env = {**os.environ, "LATENTDIFF_TUTORIAL_TINY": "1", "LATENTDIFF_TUTORIAL_OUT": str(out), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "docs" / "tutorial.py")], capture_output=True, text=True, cwd=cwd,
                       env=env)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    lines = r.stdout.strip().splitlines()
    assert lines[-1] == f"tutorial: all {CHECKS} checks passed; figures in {out}"
    numbered = [int(m.group(1)) for m in map(re.compile(r"check (\d+): .* -> ok$").match, lines) if m]
    assert numbered == list(range(1, CHECKS + 1)), numbered  # each check printed once, in order, and held
    assert "FAILED" not in r.stdout
    for name in FIGURES:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    # both stages trained into the output folder, bound by their steps (TINY: 40 and 30)
    import torch

    for run, steps in (("tutorial_ae_tiny", 40), ("tutorial_ldm_tiny", 30)):
        state = torch.load(out / "runs" / run / "checkpoints" / "last.pt", weights_only=True)
        assert state["step"] == steps and state["config"]["train"]["max_minutes"] is None
    assert not (cwd / "runs").exists() and list(cwd.iterdir()) == []
