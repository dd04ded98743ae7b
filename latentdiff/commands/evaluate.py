#!/usr/bin/env python
"""Metrics of a trained run (stage one or stage two): a printed markdown table and <run>/eval.json.

    python evaluate.py --run runs/shapes_ldm_kl --num 1000
    python evaluate.py --run runs/fashion_mnist_ae_rae --baselines gmm
    python evaluate.py --run runs/toy_swissroll

Image sets are compared with ``--num`` held-out test images (the reference) through the judge: a small
CNN trained on the dataset's own labels (cached in <run's parent>/classifiers/, trained on first use,
a minute or two on a CPU). Each set in ``samples`` is one of
  data             other held-out images (test, or train when the test split is too small): the floor
  reconstructions  the autoencoder's reconstructions of those images: the best any prior can do
  ldm              unconditional latent diffusion samples (attribute runs: nothing asked, the unconditional branch)
  ldm_conditional  samples asked for the reference images' attributes, with --guidance (attribute runs)
  ldm_drawn_attributes  nothing asked, every attribute drawn from the training data's combinations and
                   asked for, with --guidance (attribute runs: sample.unasked=data with nothing asked)
  prior            the VAE's own prior, z ~ N(0, I), decoded (VAE runs)
  gmm              ex-post GMM (Ghosh et al. 2020), fitted on the training latents, sampled and decoded
and carries fd (judge features), precision and recall (k = 3), fd_inception (null without local
Inception weights), attribute_accuracy (per attribute and joint; vs the asked-for or true values),
value_entropy (normalised entropy of each attribute's predicted values), diversity (per attribute value:
other attributes' normalised entropy and mean pairwise feature distance; images grouped by the asked-for
value, the true one for data and reconstructions, else the predicted one) and pairwise_distance; 2-D point
runs get fd, precision, recall and sliced_wasserstein on the points themselves.

eval.json keys: run, stage ("autoencoder" | "diffusion"), dataset, autoencoder (kind), settings, judge
(path, test_accuracy, test_size, feature_dim), reconstruction (mse, psnr, ssim, lpips), likelihood
(latent_bpd, bpd, bpd_standard_prior, bpd_gmm_prior, terms, decoder_variance, examples, timesteps),
samples {set: metrics}, notes (what was skipped and why). Absent figures are null.

Refused in one line (exit 2) before any work: an --out (default <run>/eval.json) or a judge cache to be trained
that cannot be written, --steps above the run's T, and --guidance / --guidance-interval on an unconditional run.
"""

import argparse

from latentdiff.cli import user_errors
from latentdiff.evaluation import EvalOptions, check_options, evaluate_run
from latentdiff.runtime import flush_denormals, pick_device


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a train_ae.py or train_diffusion.py run folder")
    p.add_argument("--num", type=int, default=1000, help="images per set, and held-out reference images")
    p.add_argument("--samples", action="append", default=[], metavar="NAME=FILE.npz",
                   help="also score an outside set (e.g. a peer's samples): an .npz whose `images` are N×C×H×W "
                        "in [-1, 1], like sample.py --npz writes (repeatable)")
    p.add_argument("--batch-size", type=int, default=250, help="images per sampling / network batch")
    p.add_argument("--sampler", choices=["ddpm", "ddim", "dpm_solver++"], default=None,
                   help="default: the run's sample.sampler")
    p.add_argument("--steps", type=int, default=None,
                   help="reverse steps, 1 to the run's T (default: the run's, else 50 / all T)")
    p.add_argument("--eta", type=float, default=None, help="DDIM eta (default: the run's sample.eta)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale of ldm_conditional (default: the run's; refused on an "
                        "unconditional run)")
    p.add_argument("--guidance-interval", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="guide only where LO <= t/T <= HI, the plain conditional model elsewhere (default: the "
                        "run's sample.guidance_interval; 0 1 guides everywhere)")
    p.add_argument("--autoguidance", type=float, default=None, metavar="W_A",
                   help="autoguidance scale w_a of every sampled set (1 = off; default: the run's "
                        "sample.autoguidance_scale); the guide is the run's own (train.guide_at) or --guide")
    p.add_argument("--guide", default=None, metavar="RUN", help="guide with this run or exported model instead")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--baselines", default="auto",
                   help="comma list of prior,gmm, or none; auto: prior for VAEs, gmm where scikit-learn is installed")
    p.add_argument("--gmm-components", type=int, default=10)
    p.add_argument("--gmm-fit-examples", type=int, default=10000, help="training latents the GMM is fitted on")
    p.add_argument("--bound-examples", type=int, default=256, help="held-out images for the likelihood bounds")
    p.add_argument("--bound-timesteps", type=int, default=None,
                   help="Monte Carlo timesteps of the diffusion bound (default: the exact sum over all T)")
    p.add_argument("--classifier-dir", default=None, help="judge cache (default: <run's parent>/classifiers)")
    p.add_argument("--classifier-steps", type=int, default=None, help="judge training steps (default 600)")
    p.add_argument("--no-inception", action="store_true", help="skip the Inception FD even where weights exist")
    p.add_argument("--checkpoint", choices=["best", "last"], default=None,
                   help="default: last for diffusion runs, best for autoencoder runs")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="JSON path (default: <run>/eval.json)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    with user_errors():
        flush_denormals()
        options = EvalOptions(**{k: v for k, v in vars(args).items() if k != "device"})
        check_options(options)  # before loading anything
        return evaluate_run(options, pick_device(args.device))


if __name__ == "__main__":
    main()
