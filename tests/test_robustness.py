"""The commands under interruption and bad input, run as a user runs them (subprocesses).

Interruption: SIGINT / SIGTERM finish the step, save, exit 128 + the signal number (130, 143) and print a
resume command that works;
``kill -9`` (also in the middle of a checkpoint write) never leaves a last.pt that does not load.
Bad input: each case is exit status 2 and exactly one line on stderr, and nothing already on disk
is lost. Config typos, unknown attribute values, a changed autoencoder and a full disk have their
tests in test_config.py, test_end_to_end.py and test_training.py.
"""

import os
import random
import re
import runpy
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import step_bound

from latentdiff.checkpoints import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
# One thread per process: the CI machine's few cores are shared, and oversubscribed threads make tiny
# runs many times slower. Behaviour, not speed, is under test here.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
AE_TINY = ["data.image_size=16", "data.train_size=32", "data.test_size=8", "eval_samples=8", "train.steps=2",
           "train.batch_size=8", "model.base_channels=8", "model.channel_mults=[1,2]"]
LDM_TINY = ["data.image_size=16", "data.train_size=32", "data.test_size=8", "bound_examples=8", "train.steps=2",
            "train.batch_size=8", "train.image_every=100", "bound_every=100", "sample.num=6", "sample.steps=2",
            "denoiser.channels=16", "denoiser.num_res_blocks=1"]


def toy(out, *extra):
    """train_diffusion.py on 2-D swiss-roll points (no autoencoder): the cheapest real training command."""
    return ["train_diffusion.py", "--config", "configs/toy/swissroll.yaml", f"out_dir={out}", "data.train_size=512",
            "data.test_size=64", "train.batch_size=64", "train.log_every=1", "train.eval_every=100000",
            "train.image_every=100000", "train.checkpoint_every=100000", "bound_every=100000",
            "bound_examples=16", "sample.num=64", "diffusion.num_timesteps=50", "denoiser.hidden=64",
            "train.steps=100000", *extra]


def cli(*args, cwd=ROOT):
    args = step_bound(args[0], map(str, args)) if args else []
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=ENV,
                          timeout=300)


def one_line_error(result) -> str:
    """The single stderr line of a command that failed on bad input (status 2, no traceback)."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, (result.returncode, result.stdout[-2000:], result.stderr)
    return lines[0]


class Running:
    """A command in the background; its output (stdout and stderr) is collected line by line."""

    def __init__(self, *args):
        self.proc = subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT, text=True, env=ENV,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self.reader.start()

    def wait_for(self, pattern: str, timeout: float = 120) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if m := re.search(pattern, line):
                    return m
            if self.proc.poll() is not None and not self.reader.is_alive():
                break
            time.sleep(0.01)
        self.proc.kill()
        raise AssertionError(f"no line matching {pattern!r}:\n{''.join(self.lines)[-3000:]}")

    def finish(self, timeout: float = 120) -> tuple[int, str]:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self.reader.join(timeout)
        return rc, "".join(self.lines)


# ----------------------------------------------------------------------------- interruption


def test_sigint_and_sigterm_save_exit_128_plus_signal_and_the_printed_command_resumes(tmp_path):
    last = tmp_path / "toy_swissroll" / "checkpoints" / "last.pt"
    first = Running(*toy(tmp_path))
    first.wait_for(r"^step \d+/")
    first.proc.send_signal(signal.SIGINT)
    rc, out = first.finish()
    m = re.search(r"^stopped at step (\d+) \(SIGINT\); checkpoint saved to (\S+); resume with: (.+)$", out, re.M)
    assert rc == 128 + signal.SIGINT and m, out[-2000:]
    stopped = int(m[1])
    assert Path(m[2]) == last and load_checkpoint(last)["step"] == stopped
    command = shlex.split(m[3])
    assert command[0] == "python"
    second = Running(*command[1:])  # exactly what the user was told to run
    second.wait_for(rf"^resuming .* from step {stopped}$")
    second.wait_for(rf"^step {stopped + 1}/")  # continues with the next step, not from 0
    second.proc.send_signal(signal.SIGTERM)
    rc, out = second.finish()
    m = re.search(r"^stopped at step (\d+) \(SIGTERM\).*resume with: python train_diffusion.py", out, re.M)
    assert rc == 128 + signal.SIGTERM and m, out[-2000:]
    assert int(m[1]) > stopped and load_checkpoint(last)["step"] == int(m[1])


def test_kill_9_even_while_writing_a_checkpoint_leaves_a_loadable_last_pt_and_resume_continues(tmp_path):
    # A checkpoint every step, of a model big enough (~2 M parameters) that writing it takes a while.
    args = toy(tmp_path, "train.checkpoint_every=1", "denoiser.hidden=512")
    ckpts = tmp_path / "toy_swissroll" / "checkpoints"
    first = Running(*args)
    first.wait_for(r"^step \d+/")
    deadline = time.monotonic() + 60
    # kill while a checkpoint is being written over an existing one
    while not ((ckpts / "last.pt").exists() and list(ckpts.glob(".last.pt.tmp*"))):
        assert time.monotonic() < deadline and first.proc.poll() is None, "never saw a checkpoint being written"
        time.sleep(0.0005)
    first.proc.kill()
    first.finish()
    interrupted_writes = list(ckpts.glob(".last.pt.tmp*"))
    step = load_checkpoint(ckpts / "last.pt")["step"]  # the previous checkpoint, intact
    second = Running(*args)
    second.wait_for(rf"^resuming .* from step {step}$")
    second.wait_for(rf"^step {step + 1}/")
    assert not any(p.exists() for p in interrupted_writes), "the killed run's temporary file is cleaned up"
    time.sleep(random.Random(0).uniform(0.0, 0.5))  # and a kill at an arbitrary moment
    second.proc.kill()
    second.finish()
    assert load_checkpoint(ckpts / "last.pt")["step"] >= step


def test_nan_loss_in_a_command_names_the_step_and_terms_and_keeps_the_last_healthy_checkpoint(tmp_path):
    r = cli(*toy(tmp_path, "train.lr=1.0e+30", "train.warmup_steps=0", "train.checkpoint_every=1"))
    line = one_line_error(r)
    m = re.search(r"loss is (nan|inf) at step (\d+) \(loss=.*last.pt now holds the last healthy checkpoint "
                  r"\(step (\d+)", line)
    assert m, line
    state = load_checkpoint(tmp_path / "toy_swissroll" / "checkpoints" / "last.pt")
    assert state["step"] == int(m[3]) < int(m[2])  # from before the loss left its band, not the diverged weights
    assert all(torch.isfinite(v).all() for v in state["model"].values())


# ----------------------------------------------------------------------------- bad data


def test_missing_dataset_lists_every_place_it_looked(tmp_path):
    from latentdiff.data import mnist

    system = mnist.FLAVOURS["mnist"]["system"]
    if any(Path(p).exists() for p in system):
        pytest.skip("this machine has a system copy of MNIST, so nothing is missing")
    line = one_line_error(cli("train_ae.py", "--config", "configs/shapes/ae_kl.yaml", "data.name=mnist",
                              f"data.root={tmp_path}"))
    assert str(tmp_path) in line and all(p in line for p in system) and "download" in line


@pytest.fixture
def image_folder(tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(6):
        pixels = torch.randint(0, 256, (8, 8, 3), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really an image")
    return folder


def ae_on(folder, out, *extra):
    return ["train_ae.py", "--config", "configs/shapes/ae_kl.yaml", f"out_dir={out}", "data.name=image_folder",
            f"data.root={folder}", "data.image_size=16", "train.steps=1", "train.batch_size=2", "eval_samples=4",
            "model.base_channels=8", "model.channel_mults=[1,2]", *extra]


def test_corrupt_image_stops_the_run_when_on_bad_file_is_error(image_folder, tmp_path):
    line = one_line_error(cli(*ae_on(image_folder, tmp_path, "data.options.on_bad_file=error")))
    assert "broken.png" in line and "on_bad_file: skip" in line
    assert not (tmp_path / "shapes_ae_kl").exists()


def test_corrupt_image_is_skipped_and_counted_by_default(image_folder, tmp_path):
    r = cli(*ae_on(image_folder, tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "skipped 1 unreadable file(s)" in r.stderr and "broken.png" in r.stderr
    assert load_checkpoint(tmp_path / "shapes_ae_kl" / "checkpoints" / "last.pt")["step"] == 1


# ----------------------------------------------------------------------------- autoencoders and checkpoints


def in_process(script, *args):
    """Run a command's ``main`` in this process (no start-up cost), on one thread as the launches are."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runpy.run_path(str(ROOT / script))["main"](step_bound(script, map(str, args)))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ldm_run(tmp_path_factory):
    """A tiny autoencoder and a diffusion run on its latents, trained in this process."""
    out = tmp_path_factory.mktemp("runs")
    in_process("train_ae.py", "--config", ROOT / "configs/shapes/ae_kl.yaml", f"out_dir={out}", *AE_TINY)
    in_process("train_diffusion.py", "--config", ROOT / "configs/shapes/ldm_kl.yaml", f"out_dir={out}",
               f"ae.run={out / 'shapes_ae_kl'}", *LDM_TINY)
    return out


def test_diffusion_on_an_autoencoder_run_without_checkpoints_is_one_line(tmp_path):
    (tmp_path / "empty_ae").mkdir()
    line = one_line_error(cli("train_diffusion.py", "--config", "configs/shapes/ldm_kl.yaml", f"out_dir={tmp_path}",
                              f"ae.run={tmp_path / 'empty_ae'}", *LDM_TINY))
    assert "holds no autoencoder checkpoint" in line and "train_ae.py" in line


def test_sampling_needs_the_runs_own_autoencoder_copy_not_the_stage_one_run(ldm_run, tmp_path):
    shutil.copytree(ldm_run, tmp_path / "runs")
    ldm = tmp_path / "runs" / "shapes_ldm_kl"
    shutil.rmtree(tmp_path / "runs" / "shapes_ae_kl")  # the run carries its own copy: sampling still works
    assert cli("sample.py", "--run", ldm, "--num", 2, "--no-progress").returncode == 0
    shutil.rmtree(ldm / "autoencoder")
    line = one_line_error(cli("sample.py", "--run", ldm, "--num", 2, "--no-progress"))
    assert "autoencoder" in line and "is missing" in line


def test_resuming_a_diffusion_run_on_an_autoencoder_with_other_latents_is_one_line_and_loses_nothing(
        ldm_run, tmp_path):
    shutil.copytree(ldm_run / "shapes_ldm_kl", tmp_path / "shapes_ldm_kl")
    in_process("train_ae.py", "--config", ROOT / "configs/shapes/ae_kl.yaml", f"out_dir={tmp_path}", "name=ae_2ch",
               "model.latent_channels=2", *AE_TINY)
    before = {p.name: p.read_bytes() for p in [tmp_path / "shapes_ldm_kl" / "config.yaml",
                                               tmp_path / "shapes_ldm_kl" / "checkpoints" / "last.pt"]}
    line = one_line_error(cli("train_diffusion.py", "--config", "configs/shapes/ldm_kl.yaml", f"out_dir={tmp_path}",
                              f"ae.run={tmp_path / 'ae_2ch'}", *LDM_TINY))
    assert "holds the autoencoder this run was trained on" in line, line  # refused before encoding (issue 29)
    after = {p.name: p.read_bytes() for p in [tmp_path / "shapes_ldm_kl" / "config.yaml",
                                              tmp_path / "shapes_ldm_kl" / "checkpoints" / "last.pt"]}
    assert after == before


def test_truncated_checkpoint_given_to_sample_is_one_line(ldm_run, tmp_path):
    run = tmp_path / "shapes_ldm_kl"
    shutil.copytree(ldm_run / "shapes_ldm_kl", run)
    data = (run / "checkpoints" / "last.pt").read_bytes()
    (run / "checkpoints" / "last.pt").write_bytes(data[: len(data) // 2])
    line = one_line_error(cli("sample.py", "--run", run, "--checkpoint", "last", "--num", 2, "--no-progress"))
    assert "last.pt" in line and "corrupt, truncated" in line
