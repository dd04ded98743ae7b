"""Faults lose nothing (issue 17): one test per fault, run as a careless or unlucky user would.

Each asserts the exit status (2 for a user error, 128 + the signal number for a signal), a single line
naming the cause, and that nothing already on disk (checkpoints, best.pt, config.yaml, the latent cache)
was lost or altered. Full disks are simulated by patching the writes and ``shutil.disk_usage``.
"""

import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from test_robustness import AE_TINY, LDM_TINY, ROOT, Running, cli, in_process, one_line_error, toy

from latentdiff.checkpoints import load_checkpoint


def hashes(folder: Path, skip=("tb", ".lock")) -> dict[str, str]:
    """sha256 of every file under ``folder`` (TensorBoard events and the lock excepted), by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.relative_to(folder).parts[0] not in skip}


def in_process_error(capsys, script, *args) -> str:
    """Run a command's main in this process; it must exit 2 with exactly one line on stderr. Returns it."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        in_process(script, *args)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.count("\n") == 0 and err.startswith("error: "), (e.value.code, err)
    return err


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ----------------------------------------------------------------------------- 1. pictures after weights


def test_1_a_failed_sample_grid_saves_the_weights_first_and_is_one_line(tmp_path):
    run = tmp_path / "toy_swissroll"
    assert cli(*toy(tmp_path, "train.steps=2")).returncode == 0
    before = hashes(run / "checkpoints")
    shutil.rmtree(run / "samples")
    (run / "samples").write_text("a file where the sample grids go: drawing them fails")
    line = one_line_error(cli(*toy(tmp_path, "train.steps=5", "train.image_every=4")))
    assert "drawing the sample grids failed at step 4" in line and "saved in" in line, line
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 4  # checkpoint_every is 100000
    after = hashes(run / "checkpoints")  # best.pt as it was (last.pt and healthy.pt moved on, as they should)
    assert after["best.pt"] == before["best.pt"] and set(after) == set(before)


# ----------------------------------------------------------------------------- 2. no silent overwrite


def test_2_a_run_folder_holding_another_run_is_refused_unless_overwrite(tmp_path):
    run, ckpts = tmp_path / "toy_swissroll", tmp_path / "toy_swissroll" / "checkpoints"
    assert cli(*toy(tmp_path, "train.steps=2", "train.eval_every=1")).returncode == 0
    assert (ckpts / "best.pt").exists()
    # a corrupt last.pt: the message offers a way that keeps best.pt
    good_last = (ckpts / "last.pt").read_bytes()
    (ckpts / "last.pt").write_bytes(good_last[: len(good_last) // 2])
    before = hashes(run)
    line = one_line_error(cli(*toy(tmp_path, "train.steps=3")))
    assert "corrupt" in line and "best.pt is kept" in line and "cp " in line, line
    assert hashes(run) == before
    # as the message said before: "delete it"; now the same command, and another architecture, are refused
    (ckpts / "last.pt").unlink()
    before = hashes(run)
    line = one_line_error(cli(*toy(tmp_path, "train.steps=3")))
    assert "but no last.pt" in line and "--overwrite" in line and "best.pt" in line, line
    line = one_line_error(cli(*toy(tmp_path, "train.steps=3", "denoiser.hidden=32")))
    assert "other settings (denoiser.hidden: 64 -> 32)" in line, line
    assert hashes(run) == before
    # the advised way on keeps best.pt; --overwrite starts over
    source = re.search(r"cp (\S+) ", line if "cp " in line else one_line_error(cli(*toy(tmp_path))))[1]
    shutil.copyfile(source, ckpts / "last.pt")
    r = cli(*toy(tmp_path, "train.steps=3"))
    assert r.returncode == 0 and re.search(r"^resuming .* from step 2$", r.stdout, re.M), r.stderr[-2000:]
    r = cli(*toy(tmp_path, "train.steps=1", "denoiser.hidden=32", "--overwrite"))
    assert r.returncode == 0 and "resuming" not in r.stdout, r.stderr[-2000:]
    assert load_checkpoint(ckpts / "last.pt")["config"]["denoiser"]["hidden"] == 32


# ----------------------------------------------------------------------------- 3. one process per run folder


def test_3_a_second_process_on_a_locked_run_folder_exits_2_naming_the_holder(tmp_path):
    run = tmp_path / "toy_swissroll"
    first = Running(*toy(tmp_path))
    first.wait_for(r"^step \d+/")
    before = hashes(run)
    line = one_line_error(cli(*toy(tmp_path, "train.steps=1")))  # unlocked, it would finish at once with status 0
    assert f"in use by process {first.proc.pid} on host {socket.gethostname()}" in line, line
    assert hashes(run) == before  # the second process touched nothing (config.yaml, the step-0 last.pt)
    first.proc.send_signal(signal.SIGTERM)
    rc, out = first.finish()
    assert rc == 128 + signal.SIGTERM, out[-2000:]
    assert not (run / ".lock").exists()  # released at exit
    # a lock left by a process that is gone (kill -9, power cut) is taken over, with a note
    (run / ".lock").write_text(f"{dead_pid()} {socket.gethostname()}\n")
    before = hashes(run)
    stopped = load_checkpoint(run / "checkpoints" / "last.pt")["step"]
    r = cli(*toy(tmp_path, f"train.steps={stopped + 1}"))
    assert r.returncode == 0 and "taking over the stale lock" in r.stderr, r.stderr[-2000:]
    assert not (run / ".lock").exists()
    assert hashes(run)["config.yaml"] != before["config.yaml"]  # it ran (train.steps is recorded)


# ----------------------------------------------------------------------------- 4. a healthy checkpoint is kept


def test_4_after_divergence_the_kept_checkpoint_trains_on_with_a_lower_lr(tmp_path):
    out = tmp_path
    in_process("train_ae.py", "--config", ROOT / "configs/shapes/ae_kl.yaml", f"out_dir={out}", *AE_TINY)
    ldm = ["train_diffusion.py", "--config", "configs/shapes/ldm_kl.yaml", f"out_dir={out}",
           f"ae.run={out / 'shapes_ae_kl'}", *LDM_TINY, "train.steps=30", "train.checkpoint_every=2",
           "train.log_every=1", "train.eval_every=1000"]
    r = cli(*ldm, "train.lr=1.0e+3")
    # the loss first jumps far above its band, still finite: one warning (issue 29), then the NaN stop, one line
    warning, line = r.stderr.strip().splitlines()
    assert r.returncode == 2 and line.startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    m = re.search(r"loss is (nan|inf) at step (\d+) .*last.pt now holds the last healthy checkpoint \(step (\d+); "
                  r"the loss or gradient norm left its running band at step (\d+)\)", line)
    assert m and int(m[3]) < int(m[4]) <= int(m[2]), line
    assert re.match(rf"warning: loss jumped to \S+ at step {m[4]}, over 100 times its running band's upper edge .*"
                    rf"healthy.pt \(step {m[3]}\)", warning), warning
    ckpts = out / "shapes_ldm_kl" / "checkpoints"
    kept = load_checkpoint(ckpts / "last.pt")
    assert kept["step"] == int(m[3]) and all(torch.isfinite(v).all() for v in kept["model"].values())
    r = cli(*ldm, "train.lr=1.0e-3")  # as advised
    assert r.returncode == 0 and f"resuming {out / 'shapes_ldm_kl'} from step {m[3]}" in r.stdout, r.stderr[-2000:]
    assert load_checkpoint(ckpts / "last.pt")["step"] == 30


# ----------------------------------------------------------------------------- 5. full disks


def test_5_full_disk_checkpoint_and_latent_cache_are_one_line_and_stale_temporaries_are_cleaned(
        tmp_path, capsys, monkeypatch):
    out = tmp_path
    in_process("train_ae.py", "--config", ROOT / "configs/shapes/ae_kl.yaml", f"out_dir={out}", *AE_TINY)
    ldm = ["train_diffusion.py", "--config", ROOT / "configs/shapes/ldm_kl.yaml", f"out_dir={out}",
           f"ae.run={out / 'shapes_ae_kl'}", *LDM_TINY]
    cache_root = out / "latent_cache"
    # the latent cache does not fit: one line before encoding, naming the path, what it needs and what is free
    Usage = namedtuple("Usage", "total used free")
    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**6, 10**6 - 1000, 1000))
    line = in_process_error(capsys, *ldm)
    assert re.search(r"latent cache .*latent_cache/\S+: needs [\d.e+-]+ [kMG]?B but .* has 1e-06 GB free", line), line
    assert not cache_root.exists() or not any(cache_root.iterdir())
    monkeypatch.setattr(shutil, "disk_usage", real_usage)
    # the disk fills up while encoding (after the check): one line, the partial cache removed
    from latentdiff import latents

    def full(self, rows):
        raise OSError(28, "No space left on device", str(self.path))

    monkeypatch.setattr(latents.NpyWriter, "write", full)
    line = in_process_error(capsys, *ldm)
    assert "No space left on device" in line and "GB free" in line and "partial cache was removed" in line, line
    assert not any(cache_root.iterdir())
    monkeypatch.undo()
    # a run that works, with temporaries that killed processes left behind
    run = out / "shapes_ldm_kl"
    stale_cache = cache_root / f"0123abcd.tmp-{dead_pid()}-{socket.gethostname()}"
    (stale_cache / "part-00000").mkdir(parents=True)
    in_process(*ldm)
    (run / "checkpoints" / ".best.pt.tmp4242").write_bytes(b"half a checkpoint")
    assert not stale_cache.exists()
    before = {**hashes(run), **hashes(cache_root)}
    # a checkpoint write that fails the way torch.save's zip writer does on a full disk

    def full_save(obj, f, *a, **k):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full_save)
    line = in_process_error(capsys, *ldm, "train.steps=3")
    assert re.search(r"could not write checkpoint \S+/checkpoints/(last|best).pt: .*unexpected pos.*GB free on ",
                     line), line
    assert "previous checkpoint is untouched" in line
    monkeypatch.undo()
    after = {**hashes(run), **hashes(cache_root)}
    for moved_on in ("config.yaml", "checkpoints/healthy.pt"):  # train.steps=3 is recorded; last.pt confirmed
        after.pop(moved_on), before.pop(moved_on)
    before.pop("checkpoints/.best.pt.tmp4242")  # the stale temporary is cleaned at start
    assert after == before
    assert not list((run / "checkpoints").glob(".*tmp*"))


# ----------------------------------------------------------------------------- 7. no GPU


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_7_device_cuda_without_a_gpu_says_so_and_not_corrupt(tmp_path):
    run = tmp_path / "toy_swissroll"
    assert cli(*toy(tmp_path, "train.steps=2")).returncode == 0
    before = hashes(run)
    line = one_line_error(cli(*toy(tmp_path, "train.steps=3", "train.device=cuda")))
    assert "no CUDA device" in line and "corrupt" not in line, line
    assert hashes(run) == before


# ----------------------------------------------------------------------------- 8. pre-emption is not success


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_8_a_signal_saves_then_exits_128_plus_its_number(tmp_path, sig):
    run = tmp_path / "toy_swissroll"
    first = Running(*toy(tmp_path, "train.eval_every=1"))
    first.wait_for(r"^step \d+/")
    first.proc.send_signal(sig)
    rc, out = first.finish()
    stops = re.findall(rf"^stopped at step (\d+) \({sig.name}\); checkpoint saved to .*$", out, re.M)
    assert rc == 128 + sig and len(stops) == 1, (rc, out[-2000:])
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == int(stops[0])
    assert (run / "checkpoints" / "best.pt").exists() and (run / "config.yaml").exists()
    assert os.environ.get("LATENTDIFF_DEBUG") is None


# ----------------------------------------------------------------------------- 10. one line, early


@pytest.mark.parametrize("flags, names", [
    (["--num", "0"], "--num 0"), (["--num", "-1"], "--num -1"), (["--guidance", "nan"], "--guidance nan"),
    (["--guidance", "inf"], "--guidance inf"), (["--out", "grid.txt"], "unknown image extension '.txt'"),
    (["--npz", "samples.npy"], "must end in .npz"), (["--out", "{file}/grid.png"], "is a file, not a folder"),
])
def test_10_bad_sample_flags_are_one_line_before_the_model_is_loaded(tmp_path, capsys, flags, names):
    (tmp_path / "file").write_text("not a folder")
    flags = [f.format(file=tmp_path / "file") for f in flags]
    line = in_process_error(capsys, "sample.py", "--run", tmp_path / "no_such_run", *flags, "--no-progress")
    assert names in line and "no_such_run" not in line, line  # refused before the run was even looked at


def test_10_bad_config_values_and_files_are_one_line_naming_the_key(tmp_path, capsys):
    cases = [("sample.guidance_scale=nan", "sample.guidance_scale: expected a finite number, got nan"),
             ("train.lr=nan", "train.lr: expected a finite number"),
             ("train.lr=.inf", "train.lr: expected a finite number"),
             ("train.adam_betas=[0.9,1.5]", "train.adam_betas: (0.9, 1.5) must be below 1.0"),
             ("train.adam_betas=[-0.1,0.99]", "train.adam_betas: (-0.1, 0.99) is below the minimum 0.0"),
             (f"out_dir={tmp_path / 'file'}", "must be a folder, but")]
    (tmp_path / "file").write_text("not a folder")
    for override, message in cases:
        line = in_process_error(capsys, *toy(tmp_path, "train.steps=1", override))  # accepted, it would finish
        assert message in line, (override, line)
    binary = tmp_path / "recipe.yaml"
    binary.write_bytes(b"name: x\n\xff\xfe\x00\x01 garbage")
    line = in_process_error(capsys, "train_diffusion.py", "--config", binary)
    assert "recipe.yaml" in line and "not UTF-8" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "recipe.yaml"]  # nothing was written


def test_10_a_truncated_latent_cache_names_the_file_and_the_fix(tmp_path, capsys):
    out = tmp_path
    in_process("train_ae.py", "--config", ROOT / "configs/shapes/ae_kl.yaml", f"out_dir={out}", *AE_TINY)
    ldm = ["train_diffusion.py", "--config", ROOT / "configs/shapes/ldm_kl.yaml", f"out_dir={out}",
           f"ae.run={out / 'shapes_ae_kl'}", *LDM_TINY]
    in_process(*ldm)
    mean = next((out / "latent_cache").glob("*/mean.npy"))
    mean.write_bytes(mean.read_bytes()[:-10])
    before = hashes(out / "shapes_ldm_kl")
    line = in_process_error(capsys, *ldm, "train.steps=3")
    assert f"latent cache file {mean} is truncated" in line and f"delete the folder {mean.parent}" in line, line
    assert hashes(out / "shapes_ldm_kl") == before


# ----------------------------------------------------------------------------- 9. reading data runs no code


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['LATENTDIFF_TEST_MARKER']}",))


def test_9_a_crafted_cifar_batch_is_refused_without_running_code(tmp_path, monkeypatch):
    import pickle

    import numpy as np

    marker = tmp_path / "pwned"
    monkeypatch.setenv("LATENTDIFF_TEST_MARKER", str(marker))
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
        if name == "data_batch_1":
            batch[b"batch_label"] = _Evil()
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    line = one_line_error(cli("train_ae.py", "--config", "configs/shapes/ae_kl.yaml", f"out_dir={tmp_path / 'runs'}",
                              "data.name=cifar10", f"data.root={tmp_path}", *AE_TINY))
    assert "data_batch_1: not a readable CIFAR-10 batch (it asks for posix.system" in line, line
    assert not marker.exists() and not (tmp_path / "runs").exists()


def test_10_sigterm_while_encoding_the_latent_cache_says_so_and_removes_the_partial_cache(tmp_path):
    import time

    in_process("train_ae.py", "--config", ROOT / "configs/shapes/ae_kl.yaml", f"out_dir={tmp_path}", *AE_TINY)
    cache_root = tmp_path / "latent_cache"
    p = Running("train_diffusion.py", "--config", "configs/shapes/ldm_kl.yaml", f"out_dir={tmp_path}",
                f"ae.run={tmp_path / 'shapes_ae_kl'}", *LDM_TINY, "data.train_size=200000")
    deadline = time.monotonic() + 120
    while not (cache_root.is_dir() and list(cache_root.glob("*.tmp-*/part-*"))):
        assert time.monotonic() < deadline and p.proc.poll() is None, "never saw the cache being encoded"
        time.sleep(0.01)
    p.proc.send_signal(signal.SIGTERM)
    rc, out = p.finish()
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert rc == 128 + signal.SIGTERM and len(errors) == 1 and "Traceback" not in out, (rc, out[-2000:])
    assert "SIGTERM while encoding the latent cache" in errors[0] and "partial cache was removed" in errors[0]
    assert not any(cache_root.iterdir())


# ----------------------------------------------------------------------------- 6. one dataset location


def test_6_a_partial_mnist_root_is_refused_and_the_folder_used_is_printed(tmp_path, capsys, monkeypatch):
    from test_data import idx_fixture

    import latentdiff.data.mnist as mnist

    system = tmp_path / "system"
    idx_fixture(system, n=16)
    monkeypatch.setitem(mnist.FLAVOURS["fashion_mnist"], "system", [str(system)])
    partial = tmp_path / "mine"
    idx_fixture(partial, n=16)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (partial / name).unlink()  # the test split would silently have come from the system copy
    ae = ["train_ae.py", "--config", ROOT / "configs/shapes/ae_kl.yaml", f"out_dir={tmp_path / 'runs'}",
          "data.name=fashion_mnist", *AE_TINY, "data.train_size=16"]
    before = hashes(tmp_path)
    line = in_process_error(capsys, *ae, f"data.root={partial}")
    assert f"data.root: {partial} holds only 2 of the 4 fashion_mnist files (missing t10k-images" in line, line
    assert hashes(tmp_path) == before and not (tmp_path / "runs").exists()
    # an empty root is refused too (issue 29), naming it: the system copy is read only when data.root is unset
    (tmp_path / "empty").mkdir()
    line = in_process_error(capsys, *ae, f"data.root={tmp_path / 'empty'}")
    assert line.startswith(f"error: data.root: {tmp_path / 'empty'} holds none of the 4 fashion_mnist IDX files "
                           f"(looked in {tmp_path / 'empty'}, ") and f"read the system copy ({system})" in line, line
    assert hashes(tmp_path) == before and not (tmp_path / "runs").exists()
    in_process(*ae)
    assert f"fashion_mnist: reading both splits from {system}" in capsys.readouterr().out
    state = load_checkpoint(tmp_path / "runs" / "shapes_ae_kl" / "checkpoints" / "last.pt")
    assert state["task"]["data_root"] == str(system)  # recorded where the data came from, not only data.root


def png_bomb(path: Path, side: int = 30000) -> Path:
    """A valid PNG header announcing side×side pixels (900 M, over Pillow's limit) in a few bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    return path


def test_10_an_image_over_the_decompression_limit_is_skipped_and_counted_or_one_line(tmp_path, capsys):
    from PIL import Image
    from test_robustness import ae_on

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8), (60 * i, 0, 0)).save(folder / f"img{i}.png")
    png_bomb(folder / "bomb.png")
    r = cli(*ae_on(folder, tmp_path / "runs"))
    assert r.returncode == 0 and "skipped 1 unreadable file(s)" in r.stderr and "bomb.png" in r.stderr, r.stderr
    line = one_line_error(cli(*ae_on(folder, tmp_path / "runs2", "data.options.on_bad_file=error")))
    assert "bomb.png" in line and "ImageTooLarge" in line, line
    line = in_process_error(capsys, "sample.py", "--run", tmp_path / "no_such_run", "--edit", folder / "bomb.png",
                            "--no-progress")
    assert "--edit" in line and "bomb.png" in line and "exceeds limit" in line, line


# ============================================================================= issue 29: refused before any work
#
# Each case: exit status 2 and one line (or a note and a run that works), before the data is read or a latent is
# encoded, and nothing new left on disk.


@pytest.fixture(scope="module")
def two_stage_ones(tmp_path_factory):
    """Two tiny autoencoders (other seeds, so other weights) and a diffusion run on the first, trained in-process."""
    out = tmp_path_factory.mktemp("issue29")
    for name, seed in (("shapes_ae_kl", 0), ("ae_other", 1)):
        in_process("train_ae.py", "--config", ROOT / "configs/shapes/ae_kl.yaml", f"out_dir={out}", f"name={name}",
                   f"train.seed={seed}", *AE_TINY)
    in_process("train_diffusion.py", "--config", ROOT / "configs/shapes/ldm_kl.yaml", f"out_dir={out}",
               f"ae.run={out / 'shapes_ae_kl'}", *LDM_TINY)
    return out


def ldm_command(out, ae_run, *extra):
    """train_diffusion.py on the tiny shapes setting, one step past the fixture's run (a resume when it is there)."""
    return ["train_diffusion.py", "--config", ROOT / "configs/shapes/ldm_kl.yaml", f"out_dir={out}", f"ae.run={ae_run}",
            *LDM_TINY, "train.steps=3", *extra]


def test_29_1_resuming_on_another_autoencoder_is_refused_before_a_latent_is_encoded(two_stage_ones, tmp_path, capsys):
    run = tmp_path / "shapes_ldm_kl"
    shutil.copytree(two_stage_ones / "shapes_ldm_kl", run)
    before = hashes(run)
    line = in_process_error(capsys, *ldm_command(tmp_path, two_stage_ones / "ae_other"))
    assert re.fullmatch(rf"error: {run / 'autoencoder'} holds the autoencoder this run was trained on \(hash "
                        r"[0-9a-f]{12}\), ae.run gives another \([0-9a-f]{12}\); point ae.run at the stage-one run it "
                        r"was trained on, or pick a new name=\.\.\. to train on this one", line), line
    assert hashes(run) == before and sorted(tmp_path.iterdir()) == [run]  # no latent cache encoded or left


def test_29_2_a_copied_run_whose_stage_one_is_gone_resumes_on_its_own_hash_checked_copy(two_stage_ones, tmp_path,
                                                                                         capsys):
    run = tmp_path / "shapes_ldm_kl"
    shutil.copytree(two_stage_ones / "shapes_ldm_kl", run)
    gone = tmp_path / "shapes_ae_kl"  # the stage-one run: moved away or deleted
    recorded = load_checkpoint(run / "checkpoints" / "last.pt")["task"]["ae"]
    weights = run / "autoencoder" / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # one bit of the copy flipped: refused, naming it
    line = in_process_error(capsys, *ldm_command(tmp_path, gone))
    assert f"{weights} changed since this diffusion run was trained" in line, line
    assert sorted(tmp_path.iterdir()) == [run]
    weights.write_bytes(good)
    in_process(*ldm_command(tmp_path, gone))
    assert (f"note: ae.run {gone} holds no autoencoder checkpoint; resuming on this run's own copy "
            f"{run / 'autoencoder'} (hash-checked") in capsys.readouterr().err
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["step"] == 3 and state["task"]["ae"] == recorded  # the same stage one, recorded as before
    # the same weights give the same latents: the cache it encoded is the original's, key and bytes
    assert hashes(tmp_path / "latent_cache") == hashes(two_stage_ones / "latent_cache")
    # a new run (no last.pt to resume) without its stage one is still sent to train it
    line = in_process_error(capsys, *ldm_command(tmp_path, gone), "name=fresh")
    assert f"ae.run: folder '{gone}' does not exist; train the autoencoder first" in line, line
    assert not (tmp_path / "fresh").exists()


def without_roots_override(monkeypatch):
    """Root writes through any permission bits (the kernel lets it, so a 0o555 folder stops nothing and refusing it
    would be wrong); under root, ``os.access`` is made to answer from the owner's write bit, as the kernel answers
    any other user. The folder, its mode and the code path are real; only root's exemption is taken away."""
    if os.geteuid() == 0:
        real = os.access

        def access(path, mode, **kw):
            return real(path, mode, **kw) and not (mode & os.W_OK and not os.stat(path).st_mode & 0o200)

        monkeypatch.setattr(os, "access", access)


def test_29_3_a_read_only_out_dir_or_cache_dir_is_one_line_before_any_work(two_stage_ones, tmp_path, capsys,
                                                                           monkeypatch):
    ro = tmp_path / "read_only"
    ro.mkdir()
    ro.chmod(0o555)
    without_roots_override(monkeypatch)
    line = in_process_error(capsys, *toy(ro, "train.steps=1"))
    assert line == (f"error: out_dir: cannot write the run folder {ro / 'toy_swissroll'}: {ro} is read-only for this "
                    f"user; pick a writable out_dir=... or make that folder writable"), line
    runs = tmp_path / "runs"
    line = in_process_error(capsys, *ldm_command(runs, two_stage_ones / "shapes_ae_kl"), f"latents.cache_dir={ro}")
    assert re.fullmatch(rf"error: latent cache {ro}/[0-9a-f]{{16}}: cannot be written \({ro} is read-only for this "
                        r"user\); point latents.cache_dir at a writable folder or make that one writable", line), line
    assert not any(ro.iterdir()) and not runs.exists()  # nothing encoded, no run folder made
    monkeypatch.undo()
    # a file where the run folder goes: the kernel refuses root as well (ENOTDIR), nothing is simulated
    (tmp_path / "toy_swissroll").write_text("not a run folder")
    line = in_process_error(capsys, *toy(tmp_path, "train.steps=1"))
    assert line == (f"error: out_dir: cannot write the run folder {tmp_path / 'toy_swissroll'}: "
                    f"{tmp_path / 'toy_swissroll'} is a file, not a folder; pick a writable out_dir=... or make that "
                    f"folder writable"), line
    assert (tmp_path / "toy_swissroll").read_text() == "not a run folder"


def test_29_4_a_folder_where_the_lock_file_goes_is_one_line_naming_it(two_stage_ones, tmp_path, capsys):
    from conftest import ToyTask, toy_dataset

    from latentdiff.config import TrainConfig
    from latentdiff.runtime import TrainingError
    from latentdiff.training import train

    run = tmp_path / "shapes_ldm_kl"
    shutil.copytree(two_stage_ones / "shapes_ldm_kl", run)
    (run / ".lock").mkdir()
    before = hashes(run)
    message = (f"{run / '.lock'} is a folder, where the run folder's lock file goes; remove it (it is not part of a "
               f"run) and rerun")
    line = in_process_error(capsys, *ldm_command(tmp_path, two_stage_ones / "shapes_ae_kl"))
    assert line == f"error: {message}", line
    assert hashes(run) == before and sorted(tmp_path.iterdir()) == [run]  # refused before encoding the cache
    # train_classifier.py into <run>/classifier: the same, before it encodes the run's latent cache
    (run / ".lock").rmdir()
    (run / "classifier" / ".lock").mkdir(parents=True)
    line = in_process_error(capsys, "train_classifier.py", "--run", run, "train.steps=1", "train.batch_size=8")
    assert line == f"error: {message.replace(str(run), str(run / 'classifier'))}", line
    assert sorted(tmp_path.iterdir()) == [run] and sorted(p.name for p in (run / "classifier").iterdir()) == [".lock"]
    (run / ".lock").mkdir()
    # the training loop's own lock (library callers of latentdiff.training.train) says the same
    with pytest.raises(TrainingError) as e:
        train(ToyTask(), toy_dataset(), TrainConfig(steps=1), run, {}, "cpu", resume=False)
    assert str(e.value) == message and hashes(run) == before


class JumpTask:
    """conftest.ToyTask whose loss is ×30 at step 3 (out of its band, not far) and ×1e6 from step 6 on: finite."""

    def __init__(self):
        from conftest import ToyTask

        self.toy = ToyTask()
        self.model, self.extra_modules, self.best_metric = self.toy.model, {}, None

    def losses(self, batch, step):
        loss = self.toy.losses(batch, step)[0]["model"] * (30.0 if step == 3 else 1e6 if step >= 6 else 1.0)
        return {"model": loss}, {"loss": loss.detach()}


def test_29_5_a_finite_divergence_warns_once_naming_healthy_pt_or_stops_there(tmp_path, capsys):
    from conftest import ToyTask, toy_dataset

    from latentdiff.config import TrainConfig
    from latentdiff.runtime import TrainingError
    from latentdiff.training import Trainer

    def config(**kw):
        return TrainConfig(**{"steps": 12, "batch_size": 16, "log_every": 100, "eval_every": 100,
                              "image_every": 100, "checkpoint_every": 2, **kw})

    Trainer(ToyTask(), toy_dataset(), config(lr=3e-3), tmp_path / "healthy", {}, "cpu").fit()
    assert "warning" not in capsys.readouterr().err  # a healthy run says nothing
    # lr=300: the loss jumps by ~11 orders of magnitude at step 1 and stays finite; before, silence to the end
    ckpts = tmp_path / "lr300" / "checkpoints"
    trainer = Trainer(ToyTask(), toy_dataset(), config(lr=300.0), tmp_path / "lr300", {}, "cpu")
    trainer.fit()
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert trainer.step == 12 and len(warnings) == 1, warnings
    assert re.fullmatch(rf"warning: loss jumped to [\d.e+]+ at step 1, over 100 times its running band's upper edge "
                        rf"\([\d.]+\): training has likely diverged; the last healthy checkpoint is "
                        rf"{ckpts / 'healthy.pt'} \(step 0\): to continue from it, cp it to {ckpts / 'last.pt'} and "
                        rf"rerun with a lower train.lr; set train.stop_on_divergence=true to stop at such a jump",
                        warnings[0]), warnings[0]
    assert load_checkpoint(ckpts / "healthy.pt")["step"] == 0
    # train.stop_on_divergence: the jump at step 6 stops the run, and last.pt is put back to healthy.pt (step 2:
    # the save at step 4 followed step 3's spike, so it was never confirmed) as after a NaN
    ckpts = tmp_path / "stop" / "checkpoints"
    trainer = Trainer(JumpTask(), toy_dataset(), config(stop_on_divergence=True), tmp_path / "stop", {}, "cpu")
    with pytest.raises(TrainingError) as e:
        trainer.fit()
    assert re.fullmatch(rf"loss jumped to [\d.e+]+ at step 6, over 100 times its running band's upper edge "
                        rf"\([\d.]+\); train.stop_on_divergence: last.pt now holds the last healthy checkpoint \(step "
                        rf"2; the loss or gradient norm left its running band at step 3\), kept also as "
                        rf"{ckpts / 'healthy.pt'}; rerun with a lower train.lr to continue from it",
                        str(e.value)), e.value
    assert load_checkpoint(ckpts / "last.pt")["step"] == 2 and os.path.samefile(ckpts / "last.pt", ckpts / "healthy.pt")
    # the command: exit 2, one line
    line = in_process_error(capsys, *toy(tmp_path, "train.steps=30", "train.lr=300", "train.stop_on_divergence=true"))
    assert re.search(r"^error: loss jumped to \S+ at step \d+, .*; train.stop_on_divergence: last.pt now holds the "
                     r"last healthy checkpoint \(step 0", line), line


def test_a_stale_latent_cache_temporary_is_called_removed_only_when_it_is_gone(tmp_path, monkeypatch):
    """A killed encode's folder (its PID gone, this host) is removed and named; one that rmtree could not remove is
    not named; a live process's is left alone."""
    from latentdiff.latents import remove_stale_cache_temporaries

    host = socket.gethostname()
    stale, live = tmp_path / f"a.tmp-{dead_pid()}-{host}", tmp_path / f"b.tmp-{os.getpid()}-{host}"
    for folder in (stale, live):
        (folder / "part-00000").mkdir(parents=True)
    monkeypatch.setattr(shutil, "rmtree", lambda *a, **k: None)  # a removal that fails quietly (ignore_errors)
    assert remove_stale_cache_temporaries(tmp_path) == [] and stale.exists()
    monkeypatch.undo()
    assert remove_stale_cache_temporaries(tmp_path) == [stale]
    assert not stale.exists() and live.exists()
