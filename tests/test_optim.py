"""The learning-rate schedule and the EMA of the weights (latentdiff.optim), against their closed forms."""

import math

import pytest
import torch

from latentdiff.config import TrainConfig
from latentdiff.optim import EMA, lr_at


def test_learning_rate_schedule_warmup_then_cosine():
    c = TrainConfig(steps=110, lr=1.0, warmup_steps=10, lr_schedule="cosine", min_lr_ratio=0.1)
    assert lr_at(0, c) == pytest.approx(0.1) and lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(10, c) == pytest.approx(1.0)
    assert lr_at(60, c) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(110, c) == pytest.approx(0.1)
    assert lr_at(50, TrainConfig(steps=100, lr=0.5)) == 0.5


def test_ema_follows_the_closed_form_average():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.9, warmup=False)
    expected = 0.0
    for k in range(1, 6):
        with torch.no_grad():
            model.weight.fill_(float(k))
        ema.update(model)
        expected = 0.9 * expected + 0.1 * k
    assert ema.module.weight.item() == pytest.approx(expected)
    warm = EMA(model, decay=0.999, warmup=True)
    assert warm.current_decay() == pytest.approx(1 / 10)
