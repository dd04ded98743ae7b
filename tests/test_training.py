"""The shared training loop: exact resume, atomic and safe checkpoints, logging, LR and EMA maths."""

import os
import signal

import pytest
import torch
from conftest import ToyTask, toy_dataset

from latentdiff.checkpoints import load_checkpoint
from latentdiff.config import ConfigError, TrainConfig, to_dict
from latentdiff.run_folder import prepare_run_dir
from latentdiff.runtime import TrainingError
from latentdiff.training import Trainer, train


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
