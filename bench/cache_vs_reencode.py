#!/usr/bin/env python
"""Training on cached latents vs re-encoding every batch through the autoencoder, per training step.

    python bench/cache_vs_reencode.py            # shapes, Fashion-MNIST (VAE, RAE), CIFAR-10, CelebA 64
    python bench/cache_vs_reencode.py --quick

For each recipe pair (stage-one config, stage-two config) the autoencoder and the denoiser are built
from the configs with random weights (speed does not depend on training) and three training steps
are timed in one process, interleaved round by round, reporting the median over rounds:

    denoiser   the denoiser step alone (ε loss, backward, AdamW) on a fixed in-memory latent batch
    cached     what train_diffusion.py does: read the batch from a LatentCache (``NpyRows``, pread),
               draw z ~ q(z|x) from the cached posterior, normalise, then the same step
    reencode   the alternative this design avoids: read an image batch, run the encoder (no grad),
               draw z, normalise, then the same step

``cached/denoiser`` is the cache's overhead (target ≤ 1.05); ``reencode/cached`` is the speed-up the
cache buys. One thread, on a machine that is shared: only the ratios within a round mean much.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, write_results  # noqa: E402

RECIPES = [("shapes", "configs/shapes/ae_kl.yaml", "configs/shapes/ldm_kl.yaml"),
           ("fashion_mnist", "configs/fashion_mnist/ae_kl.yaml", "configs/fashion_mnist/ldm_kl.yaml"),
           ("fashion_mnist", "configs/fashion_mnist/ae_rae.yaml", "configs/fashion_mnist/ldm_rae.yaml"),
           ("cifar10", "configs/cifar10/ae_kl_f4.yaml", "configs/cifar10/ldm_kl.yaml"),
           ("celeba64", "configs/celeba64/ae_kl_f4.yaml", "configs/celeba64/ldm_attrs.yaml")]
# Where a dataset is not on this machine, random images of its shape and attributes of its schema
# stand in: step time does not depend on pixel values.
STAND_INS = {"cifar10": ((3, 32, 32), [10]), "celeba64": ((3, 64, 64), [2] * 40)}


def stand_in_images(name: str, n: int):
    import torch

    from latentdiff.data import AttributeSchema
    from latentdiff.data.common import TensorImageDataset

    shape, num_values = STAND_INS[name]
    g = torch.Generator().manual_seed(0)
    attrs = torch.stack([torch.randint(0, k, (n,), generator=g) for k in num_values], dim=1)
    schema = AttributeSchema([f"a{i}" for i in range(len(num_values))],
                             [[str(v) for v in range(k)] for k in num_values])
    return TensorImageDataset(torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8), attrs, schema)


def build(ae_config: str, ldm_config: str, num_images: int, cache_dir: Path):
    """Autoencoder, denoiser task over a fresh cache of ``num_images`` training images, and that image set."""
    import torch
    from torch.utils.data import Subset

    from latentdiff.builders import build_autoencoder_from_config, build_data, build_denoiser, build_diffusion
    from latentdiff.config import AERunConfig, LDMRunConfig, load_config
    from latentdiff.latents import build_latent_cache, fit_normaliser
    from latentdiff.tasks import DiffusionTask

    ae_cfg = load_config(AERunConfig, str(ROOT / ae_config), [])
    ldm_cfg = load_config(LDMRunConfig, str(ROOT / ldm_config), ["ae.run=null"])
    try:
        images = build_data(ae_cfg.data, "train")
        images = Subset(images, range(min(num_images, len(images))))
        schema = images.dataset.schema
    except (FileNotFoundError, ValueError) as e:
        print(f"{ae_cfg.data.name} absent here ({type(e).__name__}); timing random stand-in images", flush=True)
        images = stand_in_images(Path(ae_config).parent.name, num_images)
        schema = images.schema
    autoencoder = build_autoencoder_from_config(ae_cfg.model, tuple(images[0][0].shape)).eval()
    cache = build_latent_cache(autoencoder, images, cache_dir, progress=False)
    normaliser = fit_normaliser(cache.mean, cache.logvar, ldm_cfg.latents.normalisation)
    num_values = [schema.num_values(i) for i in range(len(schema.names))] if ldm_cfg.conditioning.enabled else None
    denoiser = build_denoiser(ldm_cfg.denoiser, cache.latent_shape, num_values)
    heldout = torch.zeros(1, *cache.latent_shape)
    task = DiffusionTask(build_diffusion(ldm_cfg.diffusion), denoiser, normaliser, heldout, from_cache=True,
                         conditional=bool(num_values))
    return autoencoder, task, cache, images, ldm_cfg.train.batch_size


def time_recipe(ae_config: str, ldm_config: str, args, cache_dir: Path) -> dict:
    """Median step times (ms) of the three variants, interleaved over ``args.rounds`` rounds."""
    import torch

    from latentdiff.data_order import BatchStream

    autoencoder, task, cache, images, batch_size = build(ae_config, ldm_config, args.images, cache_dir)
    opt = torch.optim.AdamW(task.model.parameters(), lr=1e-4)

    def step(batch):
        loss = task.losses(batch, 0)[0]["model"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    fixed = next(BatchStream(cache, batch_size, seed=1))
    cached_stream = BatchStream(cache, batch_size, seed=2)
    image_stream = BatchStream(images, batch_size, seed=3)

    def reencode_step():
        x, attrs = next(image_stream)
        with torch.no_grad():
            posterior = autoencoder.encode(x)
            logvar = getattr(posterior, "logvar", None)
            mean = posterior.mean if logvar is not None else posterior.mode()
        # the same path as the cache from here on: z ~ q(z|x) is drawn inside task.losses
        step((mean, logvar if logvar is not None else torch.empty(0), attrs))

    variants = {"denoiser": lambda: step(fixed), "cached": lambda: step(next(cached_stream)),
                "reencode": reencode_step}
    for fn in variants.values():  # warm-up: allocator, first-call dispatch, Adam state
        fn()
    times = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                fn()
            times[name].append((time.perf_counter() - start) / args.steps)
    ms = {name: 1000 * statistics.median(v) for name, v in times.items()}
    from torch.utils.data import Subset

    return {"images": "real" if isinstance(images, Subset) else "random stand-in", "batch": batch_size,
            "latent_shape": "x".join(map(str, cache.latent_shape)),
            "denoiser_ms": ms["denoiser"], "cached_ms": ms["cached"], "reencode_ms": ms["reencode"],
            "cached/denoiser": ms["cached"] / ms["denoiser"], "reencode/cached": ms["reencode"] / ms["cached"]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant per round")
    p.add_argument("--images", type=int, default=4096, help="images encoded into each benchmark cache")
    p.add_argument("--quick", action="store_true", help="2 rounds of 3 steps, shapes only")
    p.add_argument("--only", default=None, help="recipes whose dataset or config path contains this")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.steps, args.images = 2, 3, 1024

    import torch

    from latentdiff.runtime import flush_denormals

    torch.set_num_threads(1)
    flush_denormals()
    rows = []
    recipes = [r for r in RECIPES if args.only is None or any(args.only in part for part in r)]
    for dataset, ae_config, ldm_config in (recipes[:1] if args.quick else recipes):
        with tempfile.TemporaryDirectory() as tmp:
            row = time_recipe(ae_config, ldm_config, args, Path(tmp) / "cache")
        rows.append({"recipe": Path(ldm_config).stem, "dataset": dataset, **row})
        print(rows[-1], flush=True)
    columns = ["recipe", "dataset", "images", "batch", "latent_shape", "denoiser_ms", "cached_ms", "reencode_ms",
               "cached/denoiser", "reencode/cached"]
    write_results("cache_vs_reencode", rows, columns,
                  extra={"rounds": args.rounds, "steps_per_round": args.steps, "threads": 1,
                         "note": "random weights; medians over interleaved rounds; shared 2-core machine"})


if __name__ == "__main__":
    main()
