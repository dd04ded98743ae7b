#!/usr/bin/env python
"""Stage two: train a DDPM (ε objective) on the latent codes of a trained autoencoder.

    python train_diffusion.py --config configs/shapes/ldm_kl.yaml ae.run=runs/shapes_ae_kl
    python train_diffusion.py --config configs/toy/swissroll.yaml        # ae.run: null, on 2-D points

The dataset is encoded once into a latent cache keyed by the autoencoder's hash and the data config;
training draws z from the cached posteriors, normalises it, and logs decoded EMA samples with fixed
noise (the same seeds each time) to TensorBoard and runs/<name>/samples/.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # runs from any folder without installing

import torch  # noqa: E402

from latentdiff.builders import (  # noqa: E402
    autoencoder_checkpoint,
    build_data,
    build_denoiser,
    build_diffusion,
    load_autoencoder,
)
from latentdiff.cli import finish_training, parse_cli, user_errors  # noqa: E402
from latentdiff.config import LDMRunConfig, to_dict  # noqa: E402
from latentdiff.latents import (  # noqa: E402
    build_latent_cache,
    cache_key,
    file_hash,
    fit_normaliser,
    sample_latents,
)
from latentdiff.tasks import DiffusionTask, toy_render  # noqa: E402
from latentdiff.training import distributed_init, is_main_process, pick_device, seed_everything, train  # noqa: E402
from latentdiff.viz import image_grid, reverse_process_grid, save_png  # noqa: E402


def encode_split(cfg, autoencoder, ae_hash, dataset, split, device):
    """The latent cache of one split, reused when it exists; under torchrun every rank encodes a shard."""
    root = Path(cfg.latents.cache_dir or Path(cfg.out_dir) / "latent_cache")
    folder = root / cache_key(ae_hash, to_dict(cfg.data), split)
    meta = {"ae_hash": ae_hash, "split": split, "data": to_dict(cfg.data)}
    if is_main_process() and (folder / "meta.json").exists():
        print(f"latent cache hit: {folder}", flush=True)
    return build_latent_cache(autoencoder, dataset, folder, cfg.latents.encode_batch_size, device,
                              progress=sys.stderr.isatty(), meta=meta)


def image_render(cfg, diffusion, normaliser, autoencoder, latent_shape, schema, conditional, run_dir):
    """Decoded EMA samples from fixed noise; for attribute runs one row per value of the first attribute."""
    n = min(cfg.sample.num, 64)
    cond = uncond = None
    nrow = None
    if conditional and schema is not None and schema.names:
        values = schema.num_values(0)
        per_row = max(1, n // values)
        n = per_row * values
        cond = torch.full((n, len(schema.names)), -1, dtype=torch.long)
        cond[:, 0] = torch.arange(values).repeat_interleave(per_row)
        uncond = torch.full_like(cond, -1)
        nrow = per_row
    noise = torch.randn(n, *latent_shape, generator=torch.Generator().manual_seed(cfg.sample.seed))

    def decode(z):
        return autoencoder.decode(normaliser.denormalise(z)).clamp(-1, 1)

    def render(model, step):
        device = next(model.parameters()).device
        c = cond.to(device) if cond is not None else None
        u = uncond.to(device) if uncond is not None else None
        scale = cfg.sample.guidance_scale if c is not None else 1.0
        every = max(1, (cfg.sample.steps or diffusion.num_timesteps) // 8)  # ~8 snapshots of the reverse process
        z, trajectory = diffusion.sample(model, noise.shape, sampler=cfg.sample.sampler, steps=cfg.sample.steps,
                                         eta=cfg.sample.eta, cond=c, uncond=u, guidance_scale=scale,
                                         noise=noise.to(device), return_trajectory=True, trajectory_every=every)
        images = decode(z)
        grid = image_grid(images, nrow=nrow)
        save_png(grid, run_dir / "samples" / f"step_{step:07d}.png")
        save_png(grid, run_dir / "samples" / "latest.png")
        first_two = {k: v[:, :2] if v.dim() > 1 else v for k, v in trajectory.items()}
        return {"samples/ema_fixed_noise": grid, "samples/reverse_process": reverse_process_grid(first_two, decode)}

    return render


def main(argv=None):
    cfg, args = parse_cli(LDMRunConfig, argv, description=__doc__)
    with user_errors():
        distributed_init()
        seed_everything(cfg.train.seed)
        device = pick_device(cfg.train.device)
        run_dir = Path(cfg.out_dir) / cfg.name
        train_set, test_set = build_data(cfg.data, "train"), build_data(cfg.data, "test")
        schema = train_set.schema
        extra_state = {"schema": schema.to_dict()}
        if getattr(train_set, "resolved_root", None):  # where MNIST-like files were actually read
            extra_state["data_root"] = str(train_set.resolved_root)
        if cfg.ae.run is not None:
            ae_path = autoencoder_checkpoint(cfg.ae.run, cfg.ae.checkpoint)
            autoencoder = load_autoencoder(ae_path, cfg.ae.use_ema, device)
            ae_hash = file_hash(ae_path)
            expected = autoencoder.sample_shape
            if tuple(train_set.sample_shape) != expected:
                raise ValueError(f"data: the autoencoder in {cfg.ae.run} was trained on images {expected}, "
                                 f"this data config gives {tuple(train_set.sample_shape)}")
            train_cache = encode_split(cfg, autoencoder, ae_hash, train_set, "train", device)
            test_cache = encode_split(cfg, autoencoder, ae_hash, test_set, "test", device)
            normaliser = fit_normaliser(train_cache.mean, train_cache.logvar, cfg.latents.normalisation)
            k = min(cfg.bound_examples, len(test_cache))
            g = torch.Generator().manual_seed(0)
            held_mean = torch.from_numpy(test_cache.mean[:k].copy())
            held_logvar = (torch.from_numpy(test_cache.logvar[:k].copy()) if test_cache.stochastic
                           else torch.empty(0))
            heldout = normaliser.normalise(sample_latents(held_mean, held_logvar, generator=g))
            latent_shape, train_data, from_cache = train_cache.latent_shape, train_cache, True
            extra_state["ae"] = {"path": str(ae_path.resolve()), "hash": ae_hash, "use_ema": cfg.ae.use_ema,
                                 "stochastic": train_cache.stochastic}
        else:
            autoencoder = None
            points = torch.stack([train_set[i][0] for i in range(len(train_set))])
            normaliser = fit_normaliser(points, None, cfg.latents.normalisation)
            k = min(cfg.bound_examples, len(test_set))
            heldout = normaliser.normalise(torch.stack([test_set[i][0] for i in range(k)]))
            latent_shape, train_data, from_cache = tuple(points.shape[1:]), train_set, False
        conditional = cfg.conditioning.enabled
        if conditional and not schema.names:
            raise ValueError(f"conditioning.enabled: dataset {cfg.data.name!r} has no attributes to condition on")
        num_values = [schema.num_values(i) for i in range(len(schema.names))] if conditional else None
        extra_state.update(latent_shape=list(latent_shape), num_values=num_values)
        diffusion = build_diffusion(cfg.diffusion)
        denoiser = build_denoiser(cfg.denoiser, latent_shape, num_values).to(device)
        if autoencoder is not None:
            render = image_render(cfg, diffusion, normaliser, autoencoder, latent_shape, schema, conditional,
                                  run_dir)
        else:
            render = toy_render(diffusion, points, normaliser, out_png=run_dir / "samples" / "latest.png")
        task = DiffusionTask(diffusion, denoiser, normaliser, heldout, from_cache, conditional,
                             cfg.conditioning.drop_attribute_prob, cfg.conditioning.drop_all_prob, render=render,
                             bound_every=cfg.bound_every, extra_state=extra_state)
        n_params = sum(p.numel() for p in denoiser.parameters())
        if is_main_process():
            print(f"denoiser: {n_params / 1e6:.2f} M parameters on latents {tuple(latent_shape)}"
                  f"{' (attribute-conditional)' if conditional else ''}; run folder {run_dir}", flush=True)
        trainer = train(task, train_data, cfg.train, run_dir, to_dict(cfg), device, args.resume,
                        num_workers=cfg.data.num_workers, argv=[Path(__file__).name, *(argv or sys.argv[1:])],
                        overwrite=args.overwrite)
        return finish_training(trainer)


if __name__ == "__main__":
    main()
