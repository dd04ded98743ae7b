"""The CelebA 64 recipes (configs/celeba64/) run both stages on a tiny CelebA-layout fixture made here, and
sample.py asks for any subset of the 40 binary attributes by name."""

import numpy as np
import torch
from PIL import Image
from test_end_to_end import ROOT, cli

# The 40 attributes of list_attr_celeba.txt, in the file's order.
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young").split()


def make_celeba(root, n=24):
    """n random 178×218 JPEGs with random ±1 attributes; 2/3 train, 1/3 test."""
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = [f"{i:06d}.jpg" for i in range(1, n + 1)]
    for f in files:
        Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(folder / "img_align_celeba" / f)
    rows = [" ".join(rng.choice(["1", "-1"], len(CELEBA_ATTRIBUTES))) for _ in files]
    (folder / "list_attr_celeba.txt").write_text(f"{n}\n" + " ".join(CELEBA_ATTRIBUTES) + "\n"
                                                 + "\n".join(f"{f} {r}" for f, r in zip(files, rows)) + "\n")
    (folder / "list_eval_partition.txt").write_text("\n".join(f"{f} {0 if i % 3 else 2}" for i, f in enumerate(files)))


def test_celeba64_recipes_train_both_stages_and_sample_chosen_attributes(tmp_path):
    make_celeba(tmp_path)
    shrink = ["train.steps=2", "train.batch_size=4", "train.eval_every=2", "train.image_every=2",
              "train.checkpoint_every=2", f"data.root={tmp_path}", f"out_dir={tmp_path / 'runs'}"]
    # the recipe's structure (VAE + PatchGAN, attention), narrower; LPIPS off (no VGG weights here)
    cli("train_ae.py", "--config", ROOT / "configs/celeba64/ae_kl_f4.yaml", *shrink, "eval_samples=4",
        "model.base_channels=8", "model.num_res_blocks=1", "loss.perceptual_weight=0", "loss.disc_start=1",
        "loss.disc_channels=8")
    cli("train_diffusion.py", "--config", ROOT / "configs/celeba64/ldm_attrs.yaml", *shrink,
        f"ae.run={tmp_path / 'runs' / 'celeba64_ae_kl_f4'}", "denoiser.channels=16", "denoiser.num_res_blocks=1",
        "bound_examples=2", "bound_every=2", "sample.num=4", "sample.steps=2")
    npz = tmp_path / "s.npz"
    cli("sample.py", "--run", tmp_path / "runs" / "celeba64_ldm_attrs", "--attr", "smiling=on", "--attr",
        "eyeglasses=on", "--num", "2", "--steps", "2", "--out", tmp_path / "s.png", "--npz", npz, "--no-progress")
    out = np.load(npz)
    names = list(out["attribute_names"])
    assert len(names) == 40 and out["images"].shape == (2, 3, 64, 64)
    attrs = out["attributes"]
    assert (attrs[:, names.index("smiling")] == 1).all() and (attrs[:, names.index("eyeglasses")] == 1).all()
    others = [i for i, n in enumerate(names) if n not in ("smiling", "eyeglasses")]
    # the recipe's sample.unasked=data: the other 38 come from a training image that smiles with glasses (a row of
    # the run's attribute prior), or stay unspecified where no training image does
    from latentdiff.pipeline import LatentDiffusion

    prior = LatentDiffusion.from_run(tmp_path / "runs" / "celeba64_ldm_attrs").attribute_prior
    both = prior.rows[(prior.rows[:, names.index("smiling")] == 1) & (prior.rows[:, names.index("eyeglasses")] == 1)]
    for row in attrs:
        if len(both):
            assert (both == torch.from_numpy(row)).all(1).any(), "a combination the data has"
        else:
            assert (row[others] == -1).all()
    cli("sample.py", "--run", tmp_path / "runs" / "celeba64_ldm_attrs", "--attr", "smiling=on", "--attr",
        "eyeglasses=on", "--num", "2", "--steps", "2", "--unasked", "model", "--out", tmp_path / "m.png", "--npz",
        tmp_path / "m.npz", "--no-progress")
    assert (np.load(tmp_path / "m.npz")["attributes"][:, others] == -1).all(), "--unasked model: left unspecified"
    r = cli("sample.py", "--run", tmp_path / "runs" / "celeba64_ldm_attrs", "--attr", "smilling=on", check=False)
    assert r.returncode == 2 and "smiling" in r.stderr and len(r.stderr.strip().splitlines()) == 1
