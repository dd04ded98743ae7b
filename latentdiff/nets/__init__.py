"""Denoisers ``net(x_t, t, cond=None)``: a UNet for spatial latents, a residual MLP for vectors and points."""

from latentdiff.nets.embeddings import TimestepEmbedding, timestep_embedding
from latentdiff.nets.mlp import MLPDenoiser
from latentdiff.nets.unet import UNet

__all__ = ["MLPDenoiser", "TimestepEmbedding", "UNet", "timestep_embedding"]
