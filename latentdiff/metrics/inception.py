"""Inception-v3 pool features (2048-d) for an ImageNet-feature Fréchet distance, where the weights are local.

torchvision's ImageNet Inception-v3 (``inception_v3_google-*.pth`` in the torch hub cache) is used when that
file is present; nothing downloads it. It is Google's original network, as in FID (Heusel et al. 2017), but
the reference FID implementations load a TF port (``pt_inception-2015-12-05``) whose figures differ
slightly, so this "FD (Inception)" is comparable across this project's runs, not with published FIDs.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F


class InceptionUnavailable(FileNotFoundError):
    """The Inception-v3 weights are not in the torch cache (and will not be downloaded)."""


def inception_weights_path() -> str:
    """Where torchvision keeps the ImageNet Inception-v3 weights."""
    import torchvision.models

    url = torchvision.models.Inception_V3_Weights.IMAGENET1K_V1.url
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def load_inception(pretrained: bool = True, device="cpu") -> torch.nn.Module:
    """Inception-v3 with its classifier removed: (B, 3, 299, 299) in [-1, 1] → (B, 2048) pool features.

    ``pretrained=False`` keeps random weights (tests of the code path only). Raises ``InceptionUnavailable``
    with one line naming the missing file.
    """
    import torchvision.models

    # transform_input=False: the Google weights expect inputs in [-1, 1], which our images already are.
    # init_weights=False: PyTorch's default initialisation; torchvision's truncated-normal one is slow and
    # would be overwritten by the weights anyway.
    model = torchvision.models.inception_v3(weights=None, aux_logits=True, transform_input=False,
                                            init_weights=False)
    if pretrained:
        path = inception_weights_path()
        if not os.path.exists(path):
            raise InceptionUnavailable(f"Inception-v3 weights {path} are not in the torch cache and are not "
                                       f"downloaded here; copy them there for the Inception FD (the domain "
                                       f"classifier's FD needs no download)")
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model.fc = torch.nn.Identity()
    return model.to(device).eval().requires_grad_(False)


@torch.no_grad()
def inception_features(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 50) -> torch.Tensor:
    """(N, 2048) features of (N, 1 or 3, H, W) images in [-1, 1], resized bilinearly to 299 × 299
    (greyscale repeated to RGB), on the CPU."""
    device = next(model.parameters()).device
    out = []
    for chunk in images.split(batch_size):
        x = chunk.to(device).float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        out.append(model(x).cpu())
    return torch.cat(out)
