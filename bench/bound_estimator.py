"""How precise the latent diffusion's bound is for its cost: the exact sum over t against K Monte Carlo timesteps.

    python bench/bound_estimator.py --run runs/fashion_mnist_ldm_kl [--examples 200] [--timesteps 100]

On the first ``--examples`` test images of the run's dataset, encoded by its autoencoder and normalised, the
negative ELBO of Eq. 5 (``GaussianDiffusion.nll_bound``) in bits per latent dimension, three ways:

- the exact sum over all T timesteps (one x_t draw per t);
- K timesteps by stratified importance sampling (``GaussianDiffusion.mc_timestep_draws``, the library's);
- K distinct timesteps drawn uniformly, scaled by (T − 1) / K (the library's estimator before 2026-12-04).

Each is computed twice with different draws on the same images: the spread of the two per image (their
difference's standard deviation / √2) is the estimator's own noise, the standard error over images what a reported
mean carries. A conditional run is scored on its unconditional branch (no condition), as evaluate.py does.
Writes bench/results/bound_estimator_<run name>.json (table + JSON).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_results  # noqa: E402


def uniform_draws(diffusion):
    """The estimator before 2026-12-04, as a stand-in for ``mc_timestep_draws``: K distinct t ∈ 1..T−1, uniformly,
    each weighted (T − 1) / K."""
    import torch

    def draws(batch, k, generator=None, gen_device="cpu"):
        n = diffusion.num_timesteps - 1
        ranks = torch.rand(batch, n, generator=generator, device=gen_device).cpu().argsort(dim=1)
        return ranks[:, :k].sort(dim=1).values + 1, torch.full((batch, k), n / k, dtype=torch.float64)

    return draws


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="a train_diffusion.py run folder or an export")
    p.add_argument("--examples", type=int, default=200, help="test images (the exact sum costs T calls each)")
    p.add_argument("--timesteps", type=int, default=100, help="K, the Monte Carlo timesteps per image")
    p.add_argument("--batch-t", type=int, default=50, help="timesteps per denoiser call")
    args = p.parse_args()

    import torch

    from latentdiff.builders import build_data
    from latentdiff.cli import user_errors
    from latentdiff.config import DataConfig, from_dict
    from latentdiff.pipeline import LatentDiffusion
    from latentdiff.runtime import flush_denormals

    with user_errors():
        if args.examples < 2:
            raise ValueError(f"--examples must be at least 2 (a standard error needs two), got {args.examples}")
        ldm = LatentDiffusion.from_run(args.run)
        diffusion, T = ldm.diffusion, ldm.diffusion.num_timesteps
        if not 1 <= args.timesteps <= T - 1:
            raise ValueError(f"--timesteps must be in 1..{T - 1} (the run's T is {T}), got {args.timesteps}")
        test = build_data(from_dict(DataConfig, ldm.config["data"]), "test")
    torch.set_num_threads(1)
    flush_denormals()
    n = min(args.examples, len(test))
    images = torch.stack([test[i][0] for i in range(n)])
    with torch.no_grad():
        z = ldm.normaliser.normalise(ldm.encode(images))

    estimators = {"exact sum over t": (None, None),
                  f"{args.timesteps} timesteps, stratified importance sampling (the library's)": (args.timesteps, None),
                  f"{args.timesteps} timesteps, uniform distinct (before 2026-12-04)":
                      (args.timesteps, uniform_draws(diffusion))}
    rows = []
    for name, (k, draws) in estimators.items():
        if draws is not None:  # this instance only draws its timesteps another way
            diffusion.mc_timestep_draws = draws
        try:
            start = time.process_time()
            bpd = [diffusion.nll_bound(ldm.denoiser, z, mc_timesteps=k, batch_t=args.batch_t,
                                       generator=torch.Generator().manual_seed(seed))["bpd"] for seed in (1, 2)]
            cpu_s = (time.process_time() - start) / 2
        finally:
            vars(diffusion).pop("mc_timestep_draws", None)  # the class's method again
        rows.append({"estimator": name, "timesteps": k or T, "bpd": float(bpd[0].mean()),
                     "bpd_other_draws": float(bpd[1].mean()),
                     "per_image_sd": float((bpd[0] - bpd[1]).std() / 2 ** 0.5),
                     "standard_error": float(bpd[0].std() / n ** 0.5), "cpu_s": cpu_s})
    exact = rows[0]["cpu_s"]
    for row in rows:
        row["cpu_vs_exact"] = row["cpu_s"] / exact
    write_results(f"bound_estimator_{args.run.resolve().name}", rows,
                  ["estimator", "timesteps", "bpd", "bpd_other_draws", "per_image_sd", "standard_error", "cpu_s",
                   "cpu_vs_exact"],
                  extra={"run": str(args.run.resolve()), "examples": n, "T": T, "latent_shape": list(z.shape[1:]),
                         "threads": 1})


if __name__ == "__main__":
    main()
