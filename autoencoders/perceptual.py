"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric").

The ``lpips`` package ships its own learned linear-layer weights (``lpips/weights/v0.1/<net>.pth``), but
its backbone (AlexNet, VGG16 or SqueezeNet 1.1, ImageNet-trained) comes from torchvision, which
downloads it into the torch hub cache. Nothing here downloads: where the backbone file is missing
``load_lpips`` fails at once with one line naming the file and how to go on without it.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch import nn

# lpips net name → the torchvision weights enum its backbone loads.
BACKBONE_WEIGHTS = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights", "squeeze": "SqueezeNet1_1_Weights"}


class LPIPSUnavailable(FileNotFoundError):
    """The LPIPS backbone weights are not in the torch cache (and will not be downloaded)."""


def backbone_path(net: str) -> str:
    """Where torchvision looks for the ImageNet weights of LPIPS's ``net`` backbone."""
    import torchvision.models

    url = getattr(torchvision.models, BACKBONE_WEIGHTS[net]).IMAGENET1K_V1.url
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


class LPIPS(nn.Module):
    """Frozen LPIPS distance: (B, C, H, W), (B, C, H, W) in [-1, 1] → (B,) distances.

    One-channel images are repeated to three (the backbones are RGB). Always in eval mode (the package's
    linear layers carry dropout), and no parameter asks for gradients; gradients still flow to the inputs.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net.eval().requires_grad_(False)

    def train(self, mode: bool = True):
        return super().train(False)  # stays deterministic inside a model in training mode

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape != b.shape or a.dim() != 4 or a.shape[1] not in (1, 3):
            raise ValueError(f"LPIPS compares two (B, 1 or 3, H, W) batches of one shape; got "
                             f"{tuple(a.shape)} and {tuple(b.shape)}")
        if a.shape[1] == 1:
            a, b = a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)
        return self.net(a, b).flatten()  # lpips averages over positions: (B, 1, 1, 1) → (B,)


def load_lpips(net: str = "vgg", pretrained: bool = True,
               without: str = "set loss.perceptual_weight: 0 to train without the perceptual loss") -> LPIPS:
    """A frozen ``LPIPS`` module.

    Args:
        net: backbone, "alex" | "vgg" | "squeeze".
        pretrained: False builds a randomly initialised backbone (lpips' ``pnet_rand=True``), for tests:
            the distance is then not perceptual, but the code path is the real one.
        without: the end of the error message: how the caller goes on without LPIPS.

    Raises:
        LPIPSUnavailable (a FileNotFoundError): the backbone weights are not in the torch cache.
    """
    if net not in BACKBONE_WEIGHTS:
        raise ValueError(f"perceptual_net={net!r}: choose one of {', '.join(BACKBONE_WEIGHTS)}")
    if pretrained:
        path = backbone_path(net)
        if not os.path.exists(path):
            raise LPIPSUnavailable(f"LPIPS ({net}) needs its ImageNet backbone {path}, which is not in the "
                                   f"torch cache and is not downloaded here; copy it there, or {without}")
    import lpips

    with warnings.catch_warnings():  # lpips calls torchvision's deprecated `pretrained=` argument
        warnings.simplefilter("ignore")
        model = lpips.LPIPS(net=net, pnet_rand=not pretrained, verbose=False)
    return LPIPS(model)
