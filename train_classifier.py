#!/usr/bin/env python
"""Train a noise-conditional attribute classifier p(a | x_t, t) on the latents of a diffusion run.

    python train_classifier.py --run runs/shapes_ldm_uncond                    # -> runs/shapes_ldm_uncond/classifier
    python train_classifier.py --run runs/shapes_ldm_uncond train.steps=500 model.width=32
    python sample.py --run runs/shapes_ldm_uncond --classifier --classifier-scale 3 --attr color=red

The run's latent caches (built by train_diffusion.py, rebuilt if missing) are noised with the run's own
schedule and normaliser, so the classifier lives in exactly the space the denoiser samples in; its
gradient then guides an unconditional run towards asked attributes (Dhariwal & Nichol 2021, §4).
TensorBoard (<run>/classifier/tb) shows the held-out accuracy of every attribute per quarter of t.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # runs from any folder without installing

import torch  # noqa: E402

from latentdiff.builders import build_data, build_ldm_from_checkpoint  # noqa: E402
from latentdiff.cli import finish_training, parse_cli, user_errors  # noqa: E402
from latentdiff.config import ClassifierRunConfig, LDMRunConfig, from_dict, to_dict  # noqa: E402
from latentdiff.latent_classifier import ClassifierTask, NoisyAttributeClassifier  # noqa: E402
from latentdiff.latents import sample_latents  # noqa: E402
from latentdiff.training import load_checkpoint, pick_device, seed_everything, train  # noqa: E402


def run_data(run: Path, state: dict, ldm, eval_examples: int):
    """(train set, held-out (normalised latents, attrs), from_cache) of the diffusion run in ``run``."""
    from train_diffusion import encode_split

    run_cfg = from_dict(LDMRunConfig, state["config"])
    if run_cfg.latents.cache_dir is None:  # the run's out_dir is <run>/.., wherever this is started from
        run_cfg.latents.cache_dir = str(run.resolve().parent / "latent_cache")
    train_set, test_set = build_data(run_cfg.data, "train"), build_data(run_cfg.data, "test")
    ae = state["task"].get("ae")
    g = torch.Generator().manual_seed(0)
    if ae:
        caches = [encode_split(run_cfg, ldm.autoencoder, ae["hash"], data, split, ldm.device)
                  for data, split in ((train_set, "train"), (test_set, "test"))]
        k = min(eval_examples, len(caches[1]))
        mean, logvar, attrs = (torch.stack(column) for column in zip(*(caches[1][i] for i in range(k))))
        z = sample_latents(mean, logvar, generator=g)
        return caches[0], (ldm.normaliser.normalise(z), attrs), True
    k = min(eval_examples, len(test_set))
    points, attrs = (torch.stack(column) for column in zip(*(test_set[i] for i in range(k))))
    return train_set, (ldm.normaliser.normalise(points), attrs), False


def main(argv=None):
    def extra(parser):
        parser.add_argument("--run", required=True, help="a train_diffusion.py run folder")

    cfg, args = parse_cli(ClassifierRunConfig, argv, description=__doc__, extra_args=extra)
    with user_errors():
        run = Path(args.run)
        if not (run / "checkpoints" / "last.pt").exists():
            raise FileNotFoundError(f"--run {run}: no diffusion checkpoint ({run / 'checkpoints' / 'last.pt'} "
                                    f"is missing); train one with train_diffusion.py first")
        seed_everything(cfg.train.seed)
        device = pick_device(cfg.train.device)
        state = load_checkpoint(run / "checkpoints" / "last.pt")
        ldm = build_ldm_from_checkpoint(state, device=device)
        if ldm.schema is None or not ldm.schema.names:
            raise ValueError(f"--run {run}: its dataset has no attributes to classify")
        schema = ldm.schema
        num_values = [schema.num_values(i) for i in range(len(schema.names))]
        train_set, heldout, from_cache = run_data(run, state, ldm, cfg.eval_examples)
        model = NoisyAttributeClassifier(ldm.latent_shape, num_values, cfg.model.width, cfg.model.num_blocks,
                                         cfg.model.dropout).to(device)
        identity = {"run": str(run.resolve()), "normaliser": ldm.normaliser.state(),
                    "latent_shape": list(ldm.latent_shape), "num_timesteps": ldm.diffusion.num_timesteps,
                    "schema": schema.to_dict(), "num_values": num_values}
        task = ClassifierTask(ldm.diffusion, model, ldm.normaliser, heldout, schema.names, from_cache,
                              extra_state=identity)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"classifier: {n_params / 1e6:.2f} M parameters, heads {dict(zip(schema.names, num_values))} "
              f"on latents {tuple(ldm.latent_shape)}; folder {run / cfg.name}", flush=True)
        trainer = train(task, train_set, cfg.train, run / cfg.name, to_dict(cfg), device, args.resume,
                        argv=[Path(__file__).name, *(argv or sys.argv[1:])],
                        overwrite=args.overwrite)
        return finish_training(trainer)


if __name__ == "__main__":
    main()
