"""Shared test fixtures: pinned threads and seeds, step-bound runs, a tiny task for the training loop.

Tests must give the same result on a quiet and on a loaded machine, so nothing that decides their numerics
is inherited from the caller: every command a test launches runs on one thread (``OMP_NUM_THREADS`` is set
here, before any subprocess starts, and subprocesses inherit it), in-process tests run on one thread from a
fixed seed, and every training command a test launches is bound by its steps alone (``STEP_BOUND``: the
recipes' wall-clock budgets, ``train.max_minutes``, would stop a tiny run early on a busy machine).
"""

import os

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

# Appended to every training command a test runs (train_ae.py, train_diffusion.py, train_classifier.py):
# ``null`` is "no time budget" (see TrainConfig.max_minutes), so a run stops at train.steps and nowhere else.
STEP_BOUND = ["train.max_minutes=null"]
TRAINING_SCRIPTS = ("train_ae.py", "train_diffusion.py", "train_classifier.py", "train_joint.py")


def step_bound(script, args) -> list:
    """``args`` of a command, with ``STEP_BOUND`` added when ``script`` is a training command."""
    args = list(args)
    return [*args, *STEP_BOUND] if str(script).endswith(TRAINING_SCRIPTS) else args


@pytest.fixture(autouse=True)
def one_thread_and_a_fixed_seed():
    """These tensors are tiny: threads gain nothing, and on a shared 2-core machine OpenMP barriers
    between many small ops make the tests many times slower. One thread keeps them fast and steady, and
    the same numerics whatever the machine; the seed makes a test's draws independent of the tests before it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


class ToyTask:
    """Regression with dropout and fresh noise each step, so resume must restore every RNG and state."""

    best_metric = ("val_mse", "min")

    def __init__(self, seed=0):
        torch.manual_seed(seed)
        self.model = nn.Sequential(nn.Linear(4, 32), nn.SiLU(), nn.Dropout(0.1), nn.Linear(32, 1))
        self.extra_modules = {}
        self.x_val = torch.randn(64, 4)
        self.y_val = self.x_val.sum(1, keepdim=True)

    def losses(self, batch, step):
        x, y = batch
        x = x + 0.01 * torch.randn_like(x)
        loss = (self.model(x) - y).pow(2).mean()
        return {"model": loss}, {"loss": loss.detach()}

    @torch.no_grad()
    def evaluate(self, model, step):
        model.eval()
        v = float((model(self.x_val) - self.y_val).pow(2).mean())
        model.train()
        return {"val_mse": v}


def toy_dataset(n=256, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, x.sum(1, keepdim=True))
