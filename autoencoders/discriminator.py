"""PatchGAN discriminator and hinge losses for the optional adversarial term of stage one.

The discriminator is pix2pix's N-layer PatchGAN (Isola et al. 2017, "Image-to-Image Translation with
Conditional Adversarial Networks"), as used by VQGAN and the LDM autoencoders: it scores overlapping
patches, so it judges local texture and leaves global structure to the reconstruction loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator(nn.Module):
    """(B, in_channels, H, W) images → (B, 1, h, w) real/fake logits, one per patch.

    ``num_layers`` 4×4 stride-2 convs (width doubling up to 8·channels), then two 4×4 stride-1 convs;
    BatchNorm + LeakyReLU(0.2) between them, as in pix2pix. For 32×32 inputs and 3 layers the output is 2×2.

    Args:
        in_channels: image channels.
        channels: width of the first layer.
        num_layers: number of stride-2 layers; each halves the side.
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, num_layers: int = 3):
        super().__init__()
        if num_layers < 1 or channels < 1:
            raise ValueError(f"disc_layers={num_layers}, disc_channels={channels}: both must be >= 1")
        layers = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        width = channels
        for n in range(1, num_layers + 1):
            prev, width = width, channels * min(2**n, 8)
            stride = 2 if n < num_layers else 1  # the last widening conv keeps the resolution
            layers += [nn.Conv2d(prev, width, 4, stride=stride, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.layers = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _init_weights(module: nn.Module) -> None:
    """DCGAN initialisation (Radford et al. 2016): conv weights N(0, 0.02), BatchNorm gains N(1, 0.02)."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """½ (E[relu(1 − D(x))] + E[relu(1 + D(x̂))]): the hinge loss (Lim & Ye 2017; Miyato et al. 2018,
    Eq. 16), halved as in LDM."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """−E[D(x̂)], the generator side of the hinge GAN (Miyato et al. 2018, Eq. 17)."""
    return -logits_fake.mean()
