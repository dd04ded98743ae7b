#!/usr/bin/env python
"""Regenerate the README's gallery (docs/gallery/*.png, *.gif) from trained runs, with the project's own commands.

    python docs/gallery.py --shapes runs/shapes_ldm_kl --fmnist runs/fashion_mnist_ldm_kl \\
        --fmnist-rae runs/fashion_mnist_ldm_rae --toy runs/toy_swissroll \\
        --ae runs/fashion_mnist_ae_kl runs/fashion_mnist_ae_rae --shapes-uncond runs/shapes_ldm_kl_uncond

Any run left out is skipped. Every picture of a diffusion run is made by sample.py or visualize.py, so
the gallery shows exactly what a user gets from those commands (fixed seeds: rerunning reproduces it);
an autoencoder run gives <run name>_reconstructions.png, its first test images beside their reconstructions.
The shapes run also edits its first test images to every colour (sample.py --edit) and fills their right half
(sample.py --inpaint), the Fashion-MNIST VAE run the lower half of its own; --shapes-uncond (an unconditional
run with a train_classifier.py classifier) shows post-hoc classifier guidance.
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from latentdiff.builders import build_data  # noqa: E402
from latentdiff.cli import user_errors  # noqa: E402
from latentdiff.config import AERunConfig, load_config  # noqa: E402
from latentdiff.loading import autoencoder_checkpoint, load_autoencoder  # noqa: E402
from latentdiff.pipeline import half_mask  # noqa: E402
from latentdiff.viz import image_grid, save_png  # noqa: E402


@torch.no_grad()
def reconstructions(ae_run: str, path: Path, pairs: int = 16) -> Path:
    """A stage-one run's first test images, each followed by its reconstruction (the posterior mode
    decoded, as train_ae.py logs them), four pairs per row."""
    if not (Path(ae_run) / "config.yaml").is_file():
        raise FileNotFoundError(f"--ae {ae_run}: not a run folder (no config.yaml); pass a train_ae.py run")
    cfg = load_config(AERunConfig, Path(ae_run) / "config.yaml")
    model = load_autoencoder(autoencoder_checkpoint(ae_run))
    test_set = build_data(cfg.data, "test")
    x = torch.stack([test_set[i][0] for i in range(min(pairs, len(test_set)))])
    recon = model.decode(model.encode(x).mode()).clamp(-1, 1)
    return save_png(image_grid(torch.stack([x, recon], dim=1).flatten(0, 1), nrow=8), path)


def test_images(run: str, folder: Path, n: int) -> list[Path]:
    """The first ``n`` test images of a diffusion run's dataset written as PNGs into ``folder`` (inputs for --edit)."""
    import yaml

    from latentdiff.config import DataConfig, from_dict

    data_config = yaml.safe_load((Path(run) / "config.yaml").read_text())["data"]  # no model needed to read it
    data = build_data(from_dict(DataConfig, data_config), "test")
    folder = folder / Path(run).name  # one folder per run: every job runs after all inputs are written
    return [save_png(image_grid(data[i][0][None], nrow=1, padding=0), folder / f"test_{i}.png") for i in range(n)]


def mask_png(image: Path, half: str, path: Path) -> Path:
    """A PNG mask for sample.py --inpaint the size of ``image``: white keeps, black (``half``: "right" or "lower")
    is filled (``latentdiff.pipeline.half_mask``)."""
    from PIL import Image

    with Image.open(image) as picture:
        width, height = picture.size
    return save_png(image_grid(half_mask(height, width, half) * 2 - 1, nrow=1, padding=0), path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", help="a conditional shapes run")
    p.add_argument("--fmnist", help="a Fashion-MNIST VAE + diffusion run")
    p.add_argument("--fmnist-rae", help="a Fashion-MNIST RAE + diffusion run")
    p.add_argument("--shapes-uncond", help="an unconditional shapes run with its post-hoc classifier")
    p.add_argument("--toy", help="a 2-D swiss-roll run")
    p.add_argument("--ae", nargs="+", default=[], help="autoencoder (stage-one) runs: reconstructions")
    p.add_argument("--out", default=str(ROOT / "docs" / "gallery"))
    args = p.parse_args(argv)
    out = Path(args.out)
    scratch = Path(tempfile.mkdtemp(prefix="gallery_"))
    jobs = []
    if args.shapes:
        shapes_inputs = test_images(args.shapes, scratch, 4)
        jobs += [("sample.py", ["--run", args.shapes, "--grid-by", "color", "--attr", "shape=triangle", "--num", "48",
                                "--guidance", "3", "--out", out / "shapes_triangles_by_color.png"]),
                 ("sample.py", ["--run", args.shapes, "--grid-by", "shape", "--attr", "color=red", "--num", "24",
                                "--guidance", "3", "--out", out / "shapes_red_by_shape.png"]),
                 ("visualize.py", ["forward", "--run", args.shapes, "--out", out / "shapes_forward.gif", "--num", "6",
                                   "--frames", "16"]),
                 ("visualize.py", ["reverse", "--run", args.shapes, "--out", out / "shapes_reverse.png", "--num", "3",
                                   "--columns", "10"]),
                 ("visualize.py", ["interpolate", "--run", args.shapes, "--out", out / "shapes_interpolation.png",
                                   "--pairs", "3", "--n", "8"]),
                 ("sample.py", ["--run", args.shapes, "--edit", *shapes_inputs, "--grid-by",
                                "color", "--edit-mode", "invert", "--strength", "0.5", "--guidance", "3",
                                "--out", out / "shapes_edit_by_color.png"]),
                 ("sample.py", ["--run", args.shapes, "--inpaint", *shapes_inputs, "--mask",
                                mask_png(shapes_inputs[0], "right", scratch / "right.png"), "--num", "6",
                                "--out", out / "shapes_inpaint_right_half.png"])]
    if args.shapes_uncond:
        jobs += [("sample.py", ["--run", args.shapes_uncond, "--classifier", "--classifier-scale", "3", "--grid-by",
                                "color", "--num", "36", "--out", out / "shapes_posthoc_by_color.png"])]
    for name, run in (("fmnist_vae", args.fmnist), ("fmnist_rae", args.fmnist_rae)):
        if run:
            jobs += [("sample.py", ["--run", run, "--num", "100", "--guidance", "0", "--out",
                                    out / f"{name}_unconditional.png"]),
                     ("sample.py", ["--run", run, "--grid-by", "class", "--num", "60", "--guidance", "2", "--out",
                                    out / f"{name}_by_class.png"])]
    if args.fmnist:
        fmnist_inputs = test_images(args.fmnist, scratch, 4)
        jobs += [("sample.py", ["--run", args.fmnist, "--inpaint", *fmnist_inputs, "--mask",
                                mask_png(fmnist_inputs[0], "lower", scratch / "lower.png"), "--num", "6",
                                "--out", out / "fmnist_vae_inpaint_lower_half.png"])]
    if args.toy:
        jobs += [("visualize.py", ["forward", "--run", args.toy, "--out", out / "swissroll_forward.gif",
                                   "--frames", "16"]),
                 ("visualize.py", ["reverse", "--run", args.toy, "--out", out / "swissroll_reverse.png",
                                   "--columns", "8"])]
    for script, script_args in jobs:  # the commands themselves, as a user runs them
        cmd = [sys.executable, str(ROOT / script), *map(str, script_args)]
        if subprocess.run(cmd + (["--no-progress"] if script == "sample.py" else [])).returncode != 0:
            sys.exit(f"error: {' '.join(cmd[1:])} failed")
    with user_errors():
        for run in args.ae:
            print(f"wrote {reconstructions(run, out / f'{Path(run).name}_reconstructions.png')}")


if __name__ == "__main__":
    main()
