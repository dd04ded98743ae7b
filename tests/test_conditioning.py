"""Attribute conditioning: 'unspecified' is the unconditional model; dropout rates are as configured; the data's
attribute prior completes what was not asked for with the data's conditional frequencies."""

import pytest
import torch

from latentdiff.conditioning import (
    UNSPECIFIED,
    AttributeEmbedding,
    AttributePrior,
    ConditionalDenoiser,
    drop_attributes,
)


class EchoNet(torch.nn.Module):
    """Returns x + (sum of the condition vector), so the condition's effect is visible."""

    def forward(self, x, t, cond=None):
        return x + cond.sum(1).view(-1, *([1] * (x.dim() - 1)))


def test_all_unspecified_equals_no_condition():
    torch.manual_seed(0)
    model = ConditionalDenoiser(EchoNet(), [3, 6, 2], dim=8)
    x, t = torch.randn(5, 4), torch.zeros(5, dtype=torch.long)
    none = model(x, t, None)
    explicit = model(x, t, torch.full((5, 3), UNSPECIFIED))
    assert torch.equal(none, explicit)
    given = model(x, t, torch.tensor([[0, 1, 1]] * 5))
    assert not torch.allclose(given, none)


def test_embedding_sums_one_row_per_attribute():
    emb = AttributeEmbedding([3, 2], dim=4)
    out = emb(torch.tensor([[2, UNSPECIFIED]]))
    expected = emb.tables[0].weight[2] + emb.tables[1].weight[2]  # row 2 of a binary table = unspecified
    assert torch.allclose(out[0], expected)


def test_drop_rates_match_the_configured_probabilities():
    g = torch.Generator().manual_seed(0)
    attrs = torch.zeros(200_000, 3, dtype=torch.long)
    out = drop_attributes(attrs, p_attribute=0.1, p_all=0.2, generator=g)
    dropped = out == UNSPECIFIED
    all_dropped = dropped.all(1).float().mean()
    # all three dropped: p_all + (1 - p_all) * 0.1^3
    assert abs(all_dropped - (0.2 + 0.8 * 1e-3)) < 0.004
    # one given attribute dropped: p_all + (1 - p_all) * 0.1
    assert abs(dropped[:, 0].float().mean() - (0.2 + 0.8 * 0.1)) < 0.004
    assert torch.equal(drop_attributes(attrs, 0.0, 0.0), attrs)


# (colour, size, shape) rows and their counts: within red (colour 0) size 1 is 3× as common as size 0, and
# shape 2 never occurs with red; blue (colour 1) is only ever (1, 0, 2).
TABLE = {(0, 0, 0): 10, (0, 0, 1): 10, (0, 1, 0): 30, (0, 1, 1): 30, (1, 0, 2): 20}


def table_labels():
    return torch.tensor([row for row, count in TABLE.items() for _ in range(count)])


def test_prior_holds_each_distinct_training_row_with_its_count():
    labels = table_labels()[torch.randperm(100, generator=torch.Generator().manual_seed(0))]
    prior = AttributePrior.from_labels(labels)
    assert {tuple(r.tolist()): int(c) for r, c in zip(prior.rows, prior.counts)} == TABLE
    again = AttributePrior.from_state(prior.state())
    assert torch.equal(again.rows, prior.rows) and torch.equal(again.counts, prior.counts)


def test_completion_draws_the_unasked_attributes_from_the_datas_conditional():
    prior = AttributePrior.from_labels(table_labels())
    n = 40000
    asked = torch.full((n, 3), UNSPECIFIED)
    asked[:, 0] = 0  # "red", nothing else
    done = prior.complete(asked, torch.Generator().manual_seed(1))
    assert (done[:, 0] == 0).all() and (done != UNSPECIFIED).all()
    # p(size=1 | red) = 60/80 and p(shape=0 | red) = 40/80; shape 2 never (no red example has it)
    for column, value, p in ((1, 1, 0.75), (2, 0, 0.5), (2, 2, 0.0)):
        freq = float((done[:, column] == value).double().mean())
        assert abs(freq - p) < 4 * (p * (1 - p) / n) ** 0.5 + 1e-12, (column, value, freq, p)
    # p(size, shape | red) jointly: each of the four combinations at its count / 80
    for (c, s, h), count in TABLE.items():
        if c == 0:
            freq = float(((done[:, 1] == s) & (done[:, 2] == h)).double().mean())
            assert abs(freq - count / 80) < 4 * (count / 80 * (1 - count / 80) / n) ** 0.5


def test_completion_keeps_what_was_asked_and_what_the_data_cannot_complete():
    prior = AttributePrior.from_labels(table_labels())
    rows = torch.tensor([[1, UNSPECIFIED, UNSPECIFIED],   # blue: the data has only (1, 0, 2)
                         [0, 1, 1],                        # everything asked: unchanged
                         [1, 1, UNSPECIFIED],              # blue and large: no example, left to the model
                         [UNSPECIFIED, UNSPECIFIED, 2]])   # shape 2: only blue, small
    done = prior.complete(rows, torch.Generator().manual_seed(0))
    assert done.tolist() == [[1, 0, 2], [0, 1, 1], [1, 1, UNSPECIFIED], [1, 0, 2]]
    with pytest.raises(ValueError, match="expected 3 attributes"):
        prior.complete(rows[:, :2])


def test_completion_is_decided_by_the_generator_seed():
    prior = AttributePrior.from_labels(table_labels())
    asked = torch.full((64, 3), UNSPECIFIED)
    first = prior.complete(asked, torch.Generator().manual_seed(3))
    assert torch.equal(first, prior.complete(asked, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, prior.complete(asked, torch.Generator().manual_seed(4)))


class RecordingDenoiser(torch.nn.Module):
    """ε̂ = 0, remembering every condition it was asked for."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # a parameter, for the device
        self.seen = []

    def forward(self, x, t, cond=None):
        self.seen.append(None if cond is None else cond.clone())
        return torch.zeros_like(x)


class IdentityDecoder(torch.nn.Module):
    def decode(self, z):
        return z[:, :3]


@pytest.mark.parametrize("unasked", ["model", "data"])
def test_training_grids_draw_the_unasked_attributes_as_the_recipe_says(tmp_path, unasked):
    from latentdiff.config import LDMRunConfig
    from latentdiff.data.shapes import SCHEMA
    from latentdiff.diffusion import GaussianDiffusion
    from latentdiff.latents import LatentNormaliser
    from latentdiff.stages import image_render

    cfg = LDMRunConfig()
    cfg.sample.num, cfg.sample.steps, cfg.sample.guidance_scale, cfg.sample.unasked = 12, 2, 1.0, unasked
    prior = AttributePrior.from_labels(torch.tensor([[c, 1, 2] for c in range(6)]))  # data: only large triangles
    render = image_render(cfg, GaussianDiffusion(10), LatentNormaliser.identity(), IdentityDecoder(), (4, 8, 8),
                          SCHEMA, True, tmp_path, prior if unasked == "data" else None)
    model = RecordingDenoiser()
    render(model, 0)
    cond = model.seen[0]
    assert cond[:, 0].tolist() == [c for c in range(6) for _ in range(2)]  # one row per colour
    expected = [1, 2] if unasked == "data" else [UNSPECIFIED, UNSPECIFIED]
    assert (cond[:, 1:] == torch.tensor(expected)).all(), cond
