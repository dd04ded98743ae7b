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
    line = one_line_error(cli(*ldm, "train.lr=1.0e+3"))
    m = re.search(r"loss is (nan|inf) at step (\d+) .*last.pt now holds the last healthy checkpoint \(step (\d+); "
                  r"the loss or gradient norm left its running band at step (\d+)\)", line)
    assert m and int(m[3]) < int(m[4]) <= int(m[2]), line
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
    # an empty root falls back to the system copy, and says so
    (tmp_path / "empty").mkdir()
    in_process(*ae, f"data.root={tmp_path / 'empty'}")
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
