"""Shared test fixtures: one thread for in-process tests, a tiny task for the training loop."""

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: threads gain nothing, and on a shared 2-core machine OpenMP barriers
    between many small ops make the tests many times slower. One thread keeps them fast and steady."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
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
