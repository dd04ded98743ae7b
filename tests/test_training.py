"""The shared training loop: exact resume, atomic and safe checkpoints, logging, LR and EMA maths."""

import os
import signal

import pytest
import torch
from conftest import ToyTask, toy_dataset

from latentdiff.checkpoints import CheckpointError, load_checkpoint
from latentdiff.config import ConfigError, TrainConfig, to_dict
from latentdiff.run_folder import prepare_run_dir
from latentdiff.runtime import TrainingError
from latentdiff.training import Trainer, resume_command, train


def cfg(**kw):
    base = dict(steps=12, batch_size=16, grad_accum=2, lr=3e-3, warmup_steps=3, lr_schedule="cosine",
                ema_decay=0.9, log_every=4, eval_every=4, image_every=100, checkpoint_every=100)
    base.update(kw)
    return TrainConfig(**base)


class InterruptedTask(ToyTask):
    """Sends itself SIGINT during step ``at``, as a user pressing Ctrl-C would."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def losses(self, batch, step):
        if step == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return super().losses(batch, step)


def run(tmp_path, name, c, resume=False, task=None):
    task = task or ToyTask()
    return train(task, toy_dataset(), c, tmp_path / name, {"train": to_dict(c)}, "cpu", resume=resume,
                 argv=["x"])


def params(trainer):
    return torch.cat([p.detach().flatten() for p in trainer.task.model.parameters()])


def test_resume_is_bit_identical_to_a_straight_run(tmp_path):
    straight = run(tmp_path, "a", cfg(steps=12))
    half = run(tmp_path, "b", cfg(steps=12), task=InterruptedTask(at=5))
    assert half.step == 6 and half.stop_reason == "SIGINT"  # finished the step it was in, then stopped
    resumed = run(tmp_path, "b", cfg(steps=12))  # rerunning into the same folder continues
    assert resumed.step == 12
    assert torch.equal(params(straight), params(resumed))
    ema_a = torch.cat([p.flatten() for p in straight.ema.module.parameters()])
    ema_b = torch.cat([p.flatten() for p in resumed.ema.module.parameters()])
    assert torch.equal(ema_a, ema_b)
    # and the run does learn: not a vacuous equality
    assert straight.best < ToyTask().evaluate(ToyTask().model, 0)["val_mse"]


def test_checkpoint_holds_everything_and_loads_weights_only(tmp_path):
    t = run(tmp_path, "a", cfg(steps=4))
    state = load_checkpoint(tmp_path / "a/checkpoints/last.pt")
    assert state["step"] == 4 and state["config"]["train"]["steps"] == 4
    assert {"model", "ema", "optimizer", "rng", "best"} <= set(state)
    assert (tmp_path / "a/checkpoints/best.pt").exists() and (tmp_path / "a/config.yaml").exists()
    assert t.best == state["best"]


def test_changed_config_in_an_existing_run_is_one_clear_error(tmp_path):
    run(tmp_path, "a", cfg(steps=2))
    with pytest.raises(ConfigError, match=r"already holds a run trained with other settings \(train.weight_decay"):
        prepare_run_dir(tmp_path / "a", {"train": to_dict(cfg(steps=2, weight_decay=0.5))}, resume=False)
    with pytest.raises(ConfigError, match="nothing to continue"):
        prepare_run_dir(tmp_path / "fresh", {}, resume=True)


class NaNTask(ToyTask):
    def losses(self, batch, step):
        losses, logs = super().losses(batch, step)
        if step >= 3:
            losses["model"] = losses["model"] * float("nan")
        return losses, logs


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    c = cfg(steps=10, checkpoint_every=2, eval_every=100)
    trainer = Trainer(NaNTask(), toy_dataset(), c, tmp_path, {}, "cpu")
    with pytest.raises(TrainingError, match=r"loss is nan at step 3 \(loss="):
        trainer.fit()
    assert load_checkpoint(tmp_path / "checkpoints/last.pt")["step"] == 2


def test_tensorboard_scalars_can_be_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(tmp_path, "a", cfg(steps=8))
    acc = EventAccumulator(str(tmp_path / "a/tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for tag in ("train/loss", "train/lr", "train/grad_norm/model", "train/images_per_sec", "eval/val_mse"):
        assert tag in tags, tags
    assert [e.step for e in acc.Scalars("train/loss")] == [4, 8]
    assert "config" in " ".join(acc.Tags()["tensors"])


# ----------------------------------------------------------------------------- the power EMA from the config, and
# which step healthy.pt holds when the loss leaves its band


def test_train_ema_sigma_rel_makes_the_trainers_ema_the_power_function_average(tmp_path):
    """With train.ema_sigma_rel the EMA after n steps is Σ_i w_i θ_i, w_i = (i^(γ+1) − (i−1)^(γ+1)) / n^(γ+1)
    (Karras et al. 2024, Eq. 3), θ_i the weights after step i; two widths give two different averages."""
    from latentdiff.optim import power_ema_gamma

    emas = {}
    for sigma_rel in (0.05, 0.2):
        trainer = Trainer(ToyTask(), toy_dataset(), cfg(ema_sigma_rel=sigma_rel), tmp_path / str(sigma_rel), {}, "cpu")
        thetas = []
        for _ in range(8):
            trainer.train_step()
            thetas.append(params(trainer).double())
        g1 = power_ema_gamma(sigma_rel) + 1
        i = torch.arange(1, 9, dtype=torch.float64)
        weights = (i**g1 - (i - 1) ** g1) / 8**g1
        expected = (weights[:, None] * torch.stack(thetas)).sum(0)
        emas[sigma_rel] = torch.cat([p.flatten() for p in trainer.ema.module.parameters()]).double()
        assert torch.allclose(emas[sigma_rel], expected, rtol=1e-5, atol=1e-6), sigma_rel
    assert not torch.allclose(emas[0.05], emas[0.2], rtol=1e-3, atol=1e-4)


class LeavesTheBandAt(ToyTask):
    """Adds 1e6 to the loss at step ``at`` (the gradients stay as they are): the loss leaves its band there only."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def losses(self, batch, step):
        losses, logs = super().losses(batch, step)
        if step == self.at:
            losses["model"] = losses["model"] + 1e6
        return losses, logs


@pytest.mark.parametrize("at,healthy", [(None, 8), (5, 4), (8, 4)])
def test_healthy_pt_is_the_last_checkpoint_confirmed_by_an_interval_and_a_next_step_in_band(tmp_path, at, healthy):
    """last.pt at steps 0, 4, 8, 12; each is promoted by the step after it (0, 4, 8; none follows 12) when that
    step and every step since the previous save stayed in band. Leaving it at step 5 (inside the interval 4..7)
    or at step 8 (the confirming step itself) leaves healthy.pt at step 4."""
    trainer = run(tmp_path, "a", cfg(steps=12, checkpoint_every=4, eval_every=100),
                  task=ToyTask() if at is None else LeavesTheBandAt(at))
    assert trainer.left_band_at == at
    assert trainer.healthy_step == healthy
    assert load_checkpoint(tmp_path / "a/checkpoints/healthy.pt")["step"] == healthy
    assert load_checkpoint(tmp_path / "a/checkpoints/last.pt")["step"] == 12


def ema_vector(module_state: dict) -> torch.Tensor:
    return torch.cat([v.flatten().float() for k, v in sorted(module_state.items())])


def test_guide_at_keeps_the_ema_of_that_step_in_every_later_checkpoint_and_survives_a_resume(tmp_path):
    """train.guide_at = 0.5 of 12 steps: the guide is the EMA as it was after step 6, exactly what a run stopped
    at step 6 holds as its EMA (same schedule: the cosine runs to train.steps in both), and a run interrupted
    before that step and resumed keeps the same guide."""
    c = cfg(steps=12, guide_at=0.5)
    straight = run(tmp_path, "a", c)
    state = load_checkpoint(tmp_path / "a/checkpoints/last.pt")
    assert state["guide_step"] == 6 and straight.guide_step == 6
    stopped = run(tmp_path, "b", cfg(steps=12), task=InterruptedTask(at=5))  # stops after step 6, no guide
    assert stopped.step == 6
    assert torch.equal(ema_vector(state["guide"]), ema_vector(stopped.ema.module.state_dict()))
    assert not torch.equal(ema_vector(state["guide"]), ema_vector(straight.ema.module.state_dict()))  # not the end
    half = run(tmp_path, "c", c, task=InterruptedTask(at=3))  # interrupted before the guide's step
    assert half.step == 4 and load_checkpoint(tmp_path / "c/checkpoints/last.pt")["guide"] is None
    run(tmp_path, "c", c)
    resumed = load_checkpoint(tmp_path / "c/checkpoints/last.pt")
    assert torch.equal(ema_vector(resumed["guide"]), ema_vector(state["guide"]))
    assert run(tmp_path, "d", cfg(steps=12)).guide_state is None  # no guide_at: no guide


def test_a_guided_run_trained_longer_is_refused_with_the_guide_at_that_keeps_its_guide(tmp_path):
    """More train.steps would move the guide's step (guide_at × steps): refused, and the message names the guide_at
    whose step is the one taken; with it the run trains on and keeps the same guide. A guide_at given to a run
    that is already past its step is refused too (the guide would never be taken)."""
    run(tmp_path, "a", cfg(steps=12, guide_at=0.5))
    guide = load_checkpoint(tmp_path / "a/checkpoints/last.pt")["guide"]
    with pytest.raises(CheckpointError, match=r"set train.guide_at=0.2142857143$") as refused:
        run(tmp_path, "a", cfg(steps=28, guide_at=0.5))
    assert "kept its guide at step 6, the config asks for step 14" in str(refused.value)
    longer = run(tmp_path, "a", cfg(steps=28, guide_at=0.2142857143))
    state = load_checkpoint(tmp_path / "a/checkpoints/last.pt")
    assert longer.step == 28 and state["guide_step"] == 6
    assert torch.equal(ema_vector(state["guide"]), ema_vector(guide))
    run(tmp_path, "b", cfg(steps=12))
    with pytest.raises(CheckpointError, match="puts the guide at step 6, but this run is at step 12 and kept none"):
        run(tmp_path, "b", cfg(steps=24, guide_at=0.25))  # a guide step already passed is never taken
    assert run(tmp_path, "b", cfg(steps=24, guide_at=0.75)).guide_step == 18  # one still ahead is


def test_the_resume_hint_runs_a_script_with_python_and_an_installed_command_as_it_is():
    assert resume_command(["train_ae.py", "--config", "a b.yaml", "--overwrite", "train.steps=9"]) == \
        "python train_ae.py --config 'a b.yaml' train.steps=9"
    assert resume_command(["latentdiff-train-ae", "--config", "c.yaml"]) == "latentdiff-train-ae --config c.yaml"
    assert resume_command(["train_ae.py"], world=2) == "torchrun <the same options> train_ae.py"
