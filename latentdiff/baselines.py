"""Baseline priors over an autoencoder's latents, scored by the same metrics as the latent diffusion.

- ``standard_normal_latents``: the VAE's own prior, z ~ N(0, I).
- ``GaussianMixturePrior``: ex-post density estimation (Ghosh et al. 2020, "From Variational to
  Deterministic Autoencoders", §4): a Gaussian mixture with full covariances fitted by EM to the latent
  codes of the training images after the autoencoder is trained (10 components in their experiments).

The mixture is scikit-learn's ``GaussianMixture`` (k-means initialisation, ``reg_covar`` on the
diagonals), the estimator Ghosh et al.'s own code used: a hand-written EM would be a second, less tested
copy of it. scikit-learn is an evaluation extra (requirements-dev.txt / requirements-bench.txt), not a
runtime dependency.
"""

from __future__ import annotations

import numpy as np
import torch


def standard_normal_latents(n: int, latent_shape: tuple, generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, *latent_shape) draws from N(0, I)."""
    return torch.randn(n, *latent_shape, generator=generator)


def sklearn_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("sklearn") is not None


class GaussianMixturePrior:
    """A full-covariance Gaussian mixture over flattened latents.

    Args:
        latents: (N, *latent_shape) codes to fit (N well above the number of components).
        components: K mixture components.
        seed: EM initialisation seed.
        reg_covar: added to every covariance diagonal (keeps them invertible; sklearn's default 1e-6).
    """

    def __init__(self, latents: torch.Tensor, components: int = 10, seed: int = 0, reg_covar: float = 1e-6,
                 max_iter: int = 200):
        if not sklearn_available():
            raise ValueError("the GMM baseline needs scikit-learn: pip install 'scikit-learn>=1.3' "
                             "(or leave gmm out of --baselines)")
        from sklearn.mixture import GaussianMixture

        if components < 1 or latents.shape[0] <= components:
            raise ValueError(f"a {components}-component mixture needs more than {components} latents "
                             f"(got {latents.shape[0]}) and at least one component")
        self.latent_shape = tuple(latents.shape[1:])
        self.fit_examples = int(latents.shape[0])
        self.gmm = GaussianMixture(components, covariance_type="full", reg_covar=reg_covar, max_iter=max_iter,
                                   random_state=seed)
        self.gmm.fit(latents.detach().double().flatten(1).cpu().numpy())

    @property
    def converged(self) -> bool:
        return bool(self.gmm.converged_)

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """(n, *latent_shape) float32 draws, in random order (sklearn returns them grouped by component)."""
        self.gmm.random_state = seed
        x, _ = self.gmm.sample(n)
        order = np.random.default_rng(seed).permutation(n)
        return torch.from_numpy(x[order]).float().view(n, *self.latent_shape)

    def nll(self, z: torch.Tensor) -> torch.Tensor:
        """−log p(z) per example (B,) nats, exact (the mixture density, not a bound)."""
        return -torch.from_numpy(self.gmm.score_samples(z.detach().double().flatten(1).cpu().numpy()))

