"""A noise-conditional attribute classifier p(a | x_t, t) in a diffusion run's latent space.

Post-hoc control of an UNCONDITIONAL latent model: where attributes live in the latent space is learnt
after the fact (Engel et al. 2017, "Latent constraints"), here as a classifier of the NOISED normalised
latents x_t = √ᾱ_t z + √(1 − ᾱ_t) ε at every t, whose gradient ∇_{x_t} log p(a | x_t) guides sampling
(Dhariwal & Nichol 2021, §4, Algorithm 2; ``latentdiff.guidance.apply_classifier_guidance``).

    python train_classifier.py --run runs/shapes_ldm_uncond         # writes runs/shapes_ldm_uncond/classifier
    python sample.py --run runs/shapes_ldm_uncond --classifier --classifier-scale 3 --attr color=red

One head per attribute of the dataset's schema; the attributes are modelled as independent given x_t,
so log p(a_1..a_A | x_t) = Σ_i log p(a_i | x_t) and an attribute not asked for is simply left out.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from latentdiff.checkpoints import CheckpointError, load_checkpoint
from latentdiff.conditioning import UNSPECIFIED
from latentdiff.config import ClassifierRunConfig, from_dict
from latentdiff.latents import LatentNormaliser, training_batch
from latentdiff.loading import load_weights
from latentdiff.nets.embeddings import TimestepEmbedding
from latentdiff.nets.mlp import ResidualMLPBlock
from latentdiff.nets.unet import ResBlock


class NoisyAttributeClassifier(nn.Module):
    """``forward(x_t, t)`` → a list of (B, num_values[i]) logits, one per attribute.

    (C, H, W) latents: the UNet's time-conditioned residual blocks (``nets.unet.ResBlock``), 2× average
    pooling after each while the map is larger than 1×1, then global average pooling. Vector latents
    (D,): the residual MLP blocks of ``nets.mlp``. The time embedding (``nets.embeddings``) enters
    every block, so one network classifies at every noise level.

    Args:
        latent_shape: (C, H, W) or (D,).
        num_values: number of values of each attribute (2 for a binary one).
        width: channels (CNN) or hidden width (MLP).
        num_blocks: residual blocks.
        dropout: inside the blocks.
    """

    def __init__(self, latent_shape: tuple, num_values: list[int], width: int = 64, num_blocks: int = 2,
                 dropout: float = 0.0):
        super().__init__()
        self.latent_shape, self.num_values = tuple(latent_shape), list(num_values)
        self.spatial = len(self.latent_shape) == 3
        if not self.spatial and len(self.latent_shape) != 1:
            raise ValueError(f"the classifier takes (C, H, W) or (D,) latents, got {self.latent_shape}")
        self.time_embed = TimestepEmbedding(width, width)
        if self.spatial:
            groups = math.gcd(width, 32)
            self.inp = nn.Conv2d(self.latent_shape[0], width, 3, padding=1)
            self.blocks = nn.ModuleList(ResBlock(width, width, width, dropout, groups) for _ in range(num_blocks))
        else:
            self.inp = nn.Linear(self.latent_shape[0], width)
            self.blocks = nn.ModuleList(ResidualMLPBlock(width, dropout) for _ in range(num_blocks))
        # normalised after the spatial pooling: a per-channel GroupNorm of a small (or 1×1) map would
        # remove the very channel means the heads read
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU())
        self.heads = nn.ModuleList(nn.Linear(width, n) for n in self.num_values)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
        if tuple(x_t.shape[1:]) != self.latent_shape:
            raise ValueError(f"the classifier was built for latents {self.latent_shape}, got {tuple(x_t.shape[1:])}")
        emb = F.silu(self.time_embed(t))
        h = self.inp(x_t)
        for block in self.blocks:
            h = block(h, emb)
            if self.spatial and min(h.shape[-2:]) > 1:
                h = F.avg_pool2d(h, 2, ceil_mode=True)
        features = self.out(h.mean((-2, -1)) if self.spatial else h)
        return [head(features) for head in self.heads]


def accuracy_by_quarter(logits: list[torch.Tensor], attrs: torch.Tensor, t: torch.Tensor, num_timesteps: int,
                        names: list[str]) -> dict:
    """Held-out accuracy per attribute, overall and per quarter of the timestep range (q1: least noise).

    Labels equal to UNSPECIFIED are not scored. Returns {"accuracy": mean over attributes,
    "accuracy/<name>": ..., "accuracy/<name>/t_q<k>": ...}.
    """
    quarter = (t * 4) // num_timesteps
    metrics, overall = {}, []
    for name, head, y in zip(names, logits, attrs.unbind(1)):
        right = (head.argmax(1) == y).float()
        known = y != UNSPECIFIED
        if not known.any():
            continue
        metrics[f"accuracy/{name}"] = float(right[known].mean())
        overall.append(metrics[f"accuracy/{name}"])
        for q in range(4):
            mask = known & (quarter == q)
            if mask.any():
                metrics[f"accuracy/{name}/t_q{q + 1}"] = float(right[mask].mean())
    metrics["accuracy"] = sum(overall) / max(len(overall), 1)
    return metrics


class ClassifierTask:
    """What ``latentdiff.training.Trainer`` trains for ``train_classifier.py``.

    Batches are a latent cache's ``(mean, logvar, attrs)`` (z ~ q(z|x) drawn afresh each visit, as the
    diffusion saw them) or ``(points, attrs)`` for runs on data. z is normalised with the diffusion run's
    normaliser, t ~ U{0..T−1}, x_t = q_sample(z, t), and the loss is the cross-entropy of every head,
    averaged over all known (example, attribute) labels (unspecified ones ignored). ``best.pt`` is the best
    held-out mean accuracy.

    Args:
        diffusion: the run's ``GaussianDiffusion`` (its q_sample).
        model: a ``NoisyAttributeClassifier``.
        normaliser: the run's ``LatentNormaliser``.
        heldout: (normalised latents (N, ...), attrs (N, A)) scored at fixed t and noise.
        names: the attribute names, for the logged metrics.
        from_cache: whether batches are cache rows (mean, logvar, attrs).
        extra_state: stored in the checkpoint (the run this classifier belongs to).
    """

    best_metric = ("accuracy", "max")

    def __init__(self, diffusion, model: NoisyAttributeClassifier, normaliser: LatentNormaliser, heldout,
                 names: list[str], from_cache: bool, extra_state: dict | None = None):
        self.diffusion, self.model, self.normaliser = diffusion, model, normaliser
        self.extra_modules = {}
        self.heldout_z, self.heldout_attrs = heldout
        self.names, self.from_cache = list(names), from_cache
        self.extra_state = extra_state or {}
        g = torch.Generator().manual_seed(1234)  # fixed t and noise: changes in accuracy are the model's alone
        self.val_t = torch.randint(0, diffusion.num_timesteps, (self.heldout_z.shape[0],), generator=g)
        self.val_noise = torch.randn(self.heldout_z.shape, generator=g)

    def state(self) -> dict:
        return dict(self.extra_state)

    def load_state(self, state: dict) -> None:
        pass  # everything in the state comes from the diffusion run, which is rebuilt the same way

    def losses(self, batch, step):
        z, attrs = training_batch(batch, self.from_cache, self.normaliser)
        t = torch.randint(0, self.diffusion.num_timesteps, (z.shape[0],), device=z.device)
        logits = self.model(self.diffusion.q_sample(z, t), t)
        # summed over the known labels, then averaged: a batch where some attribute is all unspecified is fine
        known = (attrs != UNSPECIFIED).sum().clamp(min=1)
        loss = sum(F.cross_entropy(head, y, ignore_index=UNSPECIFIED, reduction="sum")
                   for head, y in zip(logits, attrs.unbind(1))) / known
        return {"model": loss}, {"loss": loss.detach()}

    @torch.no_grad()
    def evaluate(self, model, step) -> dict:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        z, t = self.heldout_z.to(device), self.val_t.to(device)
        x_t = self.diffusion.q_sample(z, t, self.val_noise.to(device))
        logits = [torch.cat(parts) for parts in zip(*(model(x, s) for x, s in zip(x_t.split(500), t.split(500))))]
        model.train(was_training)
        return accuracy_by_quarter(logits, self.heldout_attrs.to(device), t, self.diffusion.num_timesteps,
                                   self.names)


def classifier_checkpoint(folder: str | Path) -> Path:
    """``<folder>/checkpoints/last.pt`` of a ``train_classifier.py`` run, or a .pt path given directly."""
    folder = Path(folder)
    path = folder if folder.suffix == ".pt" else folder / "checkpoints" / "last.pt"
    if not path.exists():
        raise CheckpointError(f"{folder} holds no classifier ({path} is missing); train one with "
                              f"python train_classifier.py --run <the diffusion run>")
    return path


def load_classifier(folder: str | Path, ldm=None, use_ema: bool = True, device="cpu") -> NoisyAttributeClassifier:
    """A trained classifier, frozen; with ``ldm`` (a ``LatentDiffusion``) checked to share its latent space.

    The classifier saw x_t of the run's normalised latents, so the normaliser, latent shape, number of
    timesteps and attribute schema must all be the run's; another run's classifier is a clear error.
    """
    path = classifier_checkpoint(folder)
    state = load_checkpoint(path, map_location="cpu")
    info = state.get("task", {})
    if "num_values" not in info or "normaliser" not in info:
        raise CheckpointError(f"{path} is not a train_classifier.py checkpoint")
    if ldm is not None:
        normaliser = ldm.normaliser.state()
        same_space = (tuple(info["latent_shape"]) == tuple(ldm.latent_shape)
                      and info["num_timesteps"] == ldm.diffusion.num_timesteps
                      and all(torch.equal(torch.as_tensor(info["normaliser"][k]).cpu(),
                                          torch.as_tensor(normaliser[k]).cpu()) for k in ("shift", "scale")))
        if not same_space:
            raise CheckpointError(f"classifier {path} was trained on the latents of another run ({info.get('run')}); "
                                  f"train one for this run with python train_classifier.py --run <this run>")
        if ldm.schema is None or list(info["schema"]["names"]) != list(ldm.schema.names):
            raise CheckpointError(f"classifier {path} predicts other attributes than this run's dataset has")
    cfg = from_dict(ClassifierRunConfig, state["config"])
    model = NoisyAttributeClassifier(tuple(info["latent_shape"]), info["num_values"], cfg.model.width,
                                     cfg.model.num_blocks, cfg.model.dropout)
    load_weights(model, state, use_ema, what=f"classifier {path}")
    return model.to(device).eval().requires_grad_(False)
