"""latentdiff: latent diffusion over autoencoder codes.

    from latentdiff import GaussianDiffusion, LatentDiffusion
"""

__version__ = "0.1.0"
__all__ = ["GaussianDiffusion", "LatentDiffusion"]


def __getattr__(name):
    # Imported lazily so that `import latentdiff.config` stays light (no torch import just to parse a config).
    if name == "GaussianDiffusion":
        from latentdiff.diffusion import GaussianDiffusion

        return GaussianDiffusion
    if name == "LatentDiffusion":
        from latentdiff.pipeline import LatentDiffusion

        return LatentDiffusion
    raise AttributeError(f"module 'latentdiff' has no attribute {name!r}")
