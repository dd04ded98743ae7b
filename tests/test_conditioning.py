"""Attribute conditioning: 'unspecified' is the unconditional model; dropout rates are as configured."""

import torch

from latentdiff.conditioning import UNSPECIFIED, AttributeEmbedding, ConditionalDenoiser, drop_attributes


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
