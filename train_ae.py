#!/usr/bin/env python
"""Stage one: train an autoencoder (VAE, RAE or plain AE) on images.

    python train_ae.py --config configs/shapes/ae_kl.yaml [train.steps=2000 name=my_ae ...]

Writes runs/<name>/: config.yaml, checkpoints/{last,best}.pt, TensorBoard events (tb/).
Rerunning into the same run folder continues it; under torchrun each process takes a share.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # runs from any folder without installing

import torch  # noqa: E402

from latentdiff.builders import build_autoencoder_from_config, build_data  # noqa: E402
from latentdiff.cli import finish_training, parse_cli, user_errors  # noqa: E402
from latentdiff.config import AERunConfig, to_dict  # noqa: E402
from latentdiff.tasks import AutoencoderTask  # noqa: E402
from latentdiff.training import (  # noqa: E402
    distributed_init,
    is_main_process,
    pick_device,
    seed_everything,
    train,
)


def first_images(dataset, n: int) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(min(n, len(dataset)))])


def main(argv=None):
    cfg, args = parse_cli(AERunConfig, argv, description=__doc__)
    with user_errors():
        from autoencoders import AutoencoderObjective

        distributed_init()
        seed_everything(cfg.train.seed)
        device = pick_device(cfg.train.device)
        train_set, test_set = build_data(cfg.data, "train"), build_data(cfg.data, "test")
        shape = tuple(train_set.sample_shape)
        if len(shape) != 3:
            raise ValueError(f"data.name: {cfg.data.name!r} yields {shape} points, not images; "
                             f"train a diffusion on it directly (train_diffusion.py with ae.run: null)")
        model = build_autoencoder_from_config(cfg, shape).to(device)
        objective = AutoencoderObjective(model, **vars(cfg.loss)).to(device)
        test_images = first_images(test_set, cfg.eval_samples)
        task = AutoencoderTask(model, objective, test_images, test_images[:32])
        data_root = getattr(train_set, "resolved_root", None)  # where MNIST-like files were actually read
        task.state = lambda: {"sample_shape": list(shape), "schema": train_set.schema.to_dict(),
                              **({"data_root": str(data_root)} if data_root else {})}
        run_dir = Path(cfg.out_dir) / cfg.name
        n_params = sum(p.numel() for p in model.parameters())
        if is_main_process():
            print(f"{cfg.model.kind} autoencoder: {n_params / 1e6:.2f} M parameters, latents "
                  f"{tuple(model.latent_shape)} for images {shape}; run folder {run_dir}", flush=True)
        trainer = train(task, train_set, cfg.train, run_dir, to_dict(cfg), device, args.resume,
                        num_workers=cfg.data.num_workers, argv=[Path(__file__).name, *(argv or sys.argv[1:])],
                        overwrite=args.overwrite)
        return finish_training(trainer)


if __name__ == "__main__":
    main()
