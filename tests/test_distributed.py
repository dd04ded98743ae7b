"""Training under torchrun: 2 CPU processes (gloo) against one process with the same global batch.

One ``torchrun --nproc_per_node=2`` launch runs this file as its worker (``__main__`` below) and does
every multi-process job in it, since starting processes is the slow part; the tests then check what
each job left on disk against single-process references computed here.

Jobs: (1) a deterministic regression trained with per-rank batch B against one process with batch 2B;
(2) a noisy task interrupted by a signal that reaches only rank 1, then resumed, against a straight
run; (3) the latent cache encoded in shards; (4) both training commands, ``train_ae.py`` then
``train_diffusion.py``, exactly as a user runs them.
"""

import os
import runpy
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # also when this file runs as the torchrun worker

from conftest import ToyTask, toy_dataset  # noqa: E402

from latentdiff.config import TrainConfig, to_dict  # noqa: E402
from latentdiff.latents import build_latent_cache  # noqa: E402
from latentdiff.training import Trainer, train  # noqa: E402

WORLD = 2
AE_TINY = ["data.image_size=16", "data.train_size=64", "data.test_size=16", "eval_samples=8", "train.steps=2",
           "train.batch_size=8", "model.base_channels=8", "model.channel_mults=[1,2]", "train.log_every=1"]
LDM_TINY = ["data.image_size=16", "data.train_size=64", "data.test_size=16", "bound_examples=8", "train.steps=4",
            "train.batch_size=8", "train.log_every=1", "train.eval_every=2", "train.image_every=4",
            "bound_every=4", "sample.num=6", "sample.steps=2", "denoiser.channels=16", "denoiser.num_res_blocks=1"]


class RegressionTask:
    """y = sum(x) with a small MLP and no randomness at all, so two runs can agree to rounding error."""

    def __init__(self):
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(4, 32), nn.SiLU(), nn.Linear(32, 1))

    def losses(self, batch, step):
        x, y = batch
        loss = (self.model(x) - y).pow(2).mean()
        return {"model": loss}, {"loss": loss.detach()}


class SignalOnRank1(ToyTask):
    """Rank 1 alone receives SIGINT during step ``at`` (as when a scheduler signals one node)."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def losses(self, batch, step):
        if step == self.at and int(os.environ.get("RANK", 0)) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return super().losses(batch, step)


class CountingEncoder(nn.Module):
    """A fixed linear 'VAE' encoder that counts the images it encodes."""

    latent_shape = (2, 2, 2)
    is_deterministic = False

    def __init__(self):
        super().__init__()
        self.calls = 0

    def encode(self, x):
        self.calls += x.shape[0]
        mean = x[:, :2, ::2, ::2] * 3.0

        class Posterior:
            pass

        p = Posterior()
        p.mean, p.logvar = mean, mean.abs().log1p() - 2.0
        return p


def regression_cfg(batch_size):
    return TrainConfig(steps=6, batch_size=batch_size, grad_accum=2, lr=1e-2, warmup_steps=2, ema_decay=0.9,
                       log_every=100, eval_every=100, image_every=100, checkpoint_every=100)


def noisy_cfg():
    return TrainConfig(steps=8, batch_size=8, lr=3e-3, ema_decay=0.9, log_every=100, eval_every=100,
                       image_every=100, checkpoint_every=100)


def train_regression(batch_size, run_dir, data_seed_shift=0):
    """Final weights and the gradient norm of every step (after averaging across ranks, before clipping)."""
    t = Trainer(RegressionTask(), toy_dataset(), regression_cfg(batch_size), run_dir, {}, "cpu")
    t.stream.sampler.seed += data_seed_shift
    grad_norms = torch.tensor([t.train_step()["grad_norm/model"] for _ in range(t.cfg.steps)])
    return flat_params(t.task.model), grad_norms


def cache_dataset(n=37):
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 3, 4, 4, generator=g), torch.randint(0, 3, (n, 2), generator=g))


def flat_params(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def worker(out: Path) -> None:
    """What each rank does under torchrun; results go to ``out/<job>_rank<r>.pt``."""
    from latentdiff.runtime import distributed_init

    rank, world = distributed_init()
    assert world == WORLD, world
    # (1) deterministic regression, per-rank batch 8
    params, grad_norms = train_regression(8, out / "regression")
    torch.save({"params": params, "grad_norms": grad_norms}, out / f"regression_rank{rank}.pt")
    # (2) straight run, then a run interrupted on rank 1 only, resumed by rerunning into its folder
    straight = train(ToyTask(), toy_dataset(), noisy_cfg(), out / "straight", {"train": to_dict(noisy_cfg())},
                     "cpu", resume=False, argv=["x"])
    half = train(SignalOnRank1(at=3), toy_dataset(), noisy_cfg(), out / "halted", {"train": to_dict(noisy_cfg())},
                 "cpu", resume=False, argv=["x"])
    halted_at, reason = half.step, half.stop_reason
    resumed = train(ToyTask(), toy_dataset(), noisy_cfg(), out / "halted", {"train": to_dict(noisy_cfg())}, "cpu",
                    resume=True, argv=["x"])
    torch.save({"straight": flat_params(straight.task.model), "resumed": flat_params(resumed.task.model),
                "halted_at": halted_at, "reason": reason, "noise": torch.randn(4)}, out / f"resume_rank{rank}.pt")
    # (3) the latent cache, encoded in shards
    enc = CountingEncoder()
    cache = build_latent_cache(enc, cache_dataset(), out / "cache" / "key", batch_size=8, progress=False)
    torch.save({"calls": enc.calls, "n": len(cache)}, out / f"cache_rank{rank}.pt")
    # (4) the commands, as the scripts run them
    runs = out / "runs"
    runpy.run_path(str(ROOT / "train_ae.py"))["main"](
        ["--config", str(ROOT / "configs/shapes/ae_kl.yaml"), f"out_dir={runs}", *AE_TINY])
    runpy.run_path(str(ROOT / "train_diffusion.py"))["main"](
        ["--config", str(ROOT / "configs/shapes/ldm_kl.yaml"), f"out_dir={runs}",
         f"ae.run={runs / 'shapes_ae_kl'}", *LDM_TINY])


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
           "--log-dir", str(out / "logs"), "--tee", "3", __file__, str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two ranks share the test machine's cores
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=out, env=env, timeout=300)
    assert r.returncode == 0, f"torchrun failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return out


def load(out, job, rank):
    return torch.load(out / f"{job}_rank{rank}.pt", weights_only=True)


def test_two_ranks_hold_identical_weights_equal_to_one_process_with_the_global_batch(launched, tmp_path):
    ranks = [load(launched, "regression", r) for r in range(WORLD)]
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])
    params, grad_norms = train_regression(8 * WORLD, tmp_path / "one")
    # gradients are the mean over the global batch (Adam alone would hide a sum-instead-of-mean slip)
    assert torch.allclose(ranks[0]["grad_norms"], grad_norms, rtol=1e-5), (ranks[0]["grad_norms"], grad_norms)
    assert torch.allclose(ranks[0]["params"], params, atol=1e-6), (ranks[0]["params"] - params).abs().max()
    # the tolerance is tight enough to notice other data: the same run over another order is far off
    other, _ = train_regression(8 * WORLD, tmp_path / "other", data_seed_shift=1)
    assert (other - params).abs().max() > 1e-3
    assert (params - flat_params(RegressionTask().model)).abs().max() > 1e-2, "training moved the weights"


def test_a_signal_on_one_rank_stops_all_ranks_at_the_same_step_and_resume_is_exact(launched):
    ranks = [load(launched, "resume", r) for r in range(WORLD)]
    assert [r["halted_at"] for r in ranks] == [4, 4]  # step 3 finished on both, then both stopped
    assert ranks[1]["reason"] == "SIGINT" and ranks[0]["reason"] == "another rank was stopped"
    for r in ranks:
        assert torch.equal(r["straight"], r["resumed"])
    assert torch.equal(ranks[0]["resumed"], ranks[1]["resumed"])
    assert not torch.equal(ranks[0]["noise"], ranks[1]["noise"]), "ranks must draw independent noise"


def test_latent_cache_is_encoded_in_shards_and_equals_a_single_process_cache(launched, tmp_path):
    counts = [load(launched, "cache", r) for r in range(WORLD)]
    assert [c["calls"] for c in counts] == [18, 19] and all(c["n"] == 37 for c in counts)
    sharded = build_latent_cache(CountingEncoder(), cache_dataset(), launched / "cache" / "key", progress=False)
    single = build_latent_cache(CountingEncoder(), cache_dataset(), tmp_path / "key", batch_size=8, progress=False)
    for name in ("mean", "logvar", "attrs"):
        assert np.array_equal(getattr(sharded, name), getattr(single, name)), name
    assert sharded.meta["n"] == 37 and sorted(p.name for p in (launched / "cache").iterdir()) == ["key"]


def test_commands_run_under_torchrun_and_only_rank_0_writes(launched):
    runs = launched / "runs"
    for name, steps in (("shapes_ae_kl", 2), ("shapes_ldm_kl", 4)):
        ckpts = sorted(p.name for p in (runs / name / "checkpoints").iterdir())
        assert ckpts == ["best.pt", "healthy.pt", "last.pt"], ckpts  # and no temporary of a second writer
        assert torch.load(runs / name / "checkpoints" / "last.pt", weights_only=True)["step"] == steps
        assert len(list((runs / name / "tb").glob("events.out.tfevents.*"))) == 1
    caches = sorted((runs / "latent_cache").iterdir())
    assert len(caches) == 2 and all((c / "meta.json").exists() for c in caches)  # train and test, no leftovers
    logs = {int(p.parent.name): p.read_text() for p in (launched / "logs").rglob("stdout.log")}
    assert "step 4/4" in logs[0] and "TensorBoard logs" in logs[0]
    assert logs[1].strip() == "", logs[1]


if __name__ == "__main__":
    worker(Path(sys.argv[1]))


@pytest.mark.parametrize("rank, printed", [("0", True), ("1", False)])
def test_a_user_error_is_printed_by_rank_0_only_and_every_rank_exits_2(monkeypatch, capsys, rank, printed):
    from latentdiff.cli import exit_with_error

    monkeypatch.setenv("RANK", rank)
    with pytest.raises(SystemExit) as exit_info:
        exit_with_error("data.name: 'shapez' is not a dataset")
    assert exit_info.value.code == 2
    assert ("error: data.name" in capsys.readouterr().err) == printed
