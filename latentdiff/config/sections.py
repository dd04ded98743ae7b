"""The typed config sections: one dataclass per section of a run config, one run config per training command.

A field is a key: its type (a ``Literal`` gives the choices), its default, ``check(...)`` metadata for the limits of
its own value (applied by ``parsing``, listed in docs/config.md) and a trailing ``# comment``, which docs/config.md
shows as the key's meaning (``reference`` reads it from this source)::

    steps: int = field(default=1000, metadata=check(min=1))
    kind: Literal["vae", "rae", "ae"] = "vae"                 # choices come from the Literal
    root: str | None = field(default=None, metadata=check(path="dir"))

A rule that involves another key (or excludes a bound's end) is a constraint, in ``constraints``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Literal

from latentdiff.config.parsing import ConfigError


def check(*, min=None, max=None, below=None, path=None, power_of_two=False, help=None):  # noqa: A002
    """Field metadata: numeric bounds (``min``/``max`` inclusive, ``below`` exclusive), ``path="file"|"dir"``
    existence or ``path="folder"`` (a folder or nothing yet, never a file), powers of two.

    Every float field, with metadata or not, must also be finite: NaN and infinity are refused in ``parsing._coerce``.
    """
    return {"min": min, "max": max, "below": below, "path": path, "power_of_two": power_of_two, "help": help}


# ----------------------------------------------------------------------------- shared sections


@dataclass
class DataConfig:
    """Which dataset and split sizes; see ``latentdiff.data.build_dataset``."""

    name: str = "shapes"  # shapes, mnist, fashion_mnist, cifar10, celeba, image_folder, swissroll, moons, ...
    root: str | None = field(default=None, metadata=check(path="dir"))  # None: the dataset's usual places
    download: bool = False  # fetch with torchvision when the files are absent
    image_size: int | None = field(default=None, metadata=check(min=1))  # None: the dataset's default
    train_size: int | None = field(default=None, metadata=check(min=1))  # None: the dataset's default
    test_size: int | None = field(default=None, metadata=check(min=1))  # None: the dataset's default
    seed: int = 0  # synthetic datasets: which images are generated
    num_workers: int = field(default=0, metadata=check(min=0))  # DataLoader worker processes
    options: dict = field(default_factory=dict)  # dataset-specific keyword arguments

    def __post_init__(self):
        # Checked here, before any work: a misspelt dataset or option is one line with the closest name.
        from latentdiff.data import dataset_names, dataset_options

        names = dataset_names()
        if self.name not in names:
            close = difflib.get_close_matches(self.name, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"data.name: unknown dataset {self.name!r}{hint} (valid: {', '.join(names)})")
        valid = dataset_options(self.name)
        for key in self.options:
            if key not in valid:
                close = difflib.get_close_matches(str(key), valid, n=1)
                hint = f"; did you mean 'data.options.{close[0]}'?" if close else ""
                raise ConfigError(f"data.options.{key}: not an option of dataset {self.name!r}{hint} "
                                  f"(valid: {', '.join(valid) or 'none'})")


@dataclass
class TrainConfig:
    """The shared training loop (``latentdiff.training``): optimiser, schedule, EMA, logging, checkpoints."""

    steps: int = field(default=10_000, metadata=check(min=1))  # optimiser steps in all
    batch_size: int = field(default=64, metadata=check(min=1))  # per process (torchrun: N·B globally)
    grad_accum: int = field(default=1, metadata=check(min=1))  # micro-batches per optimiser step
    lr: float = field(default=2e-4, metadata=check(min=0.0))  # AdamW peak learning rate
    weight_decay: float = field(default=0.0, metadata=check(min=0.0))  # AdamW decoupled decay
    adam_betas: tuple[float, float] = field(default=(0.9, 0.999), metadata=check(min=0.0, below=1.0))  # AdamW β1, β2
    warmup_steps: int = field(default=0, metadata=check(min=0))  # linear warm-up from 0
    lr_schedule: Literal["constant", "cosine"] = "constant"  # after warm-up; cosine ends at train.steps
    min_lr_ratio: float = field(default=0.1, metadata=check(min=0.0, max=1.0))  # cosine floor, fraction of lr
    grad_clip: float | None = field(default=1.0, metadata=check(min=0.0))  # None: no clipping
    ema_decay: float | None = field(default=0.999, metadata=check(min=0.0, max=1.0))  # None: no EMA
    ema_warmup: bool = True  # decay_n = min(decay, (1 + n) / (10 + n)), so early EMA is not stuck at init
    ema_sigma_rel: float | None = field(default=None, metadata=check(min=0.0, help=(
        "set: Karras et al. 2024's power-function EMA in place of ema_decay's, its averaging profile this wide (a "
        "fraction of the run, 0.05-0.2); the warm-up EMA is close to 0.09 for runs under 9 / (1 - ema_decay) steps")))
    amp: Literal["off", "bf16", "fp16"] = "off"  # autocast (fp16 adds a gradient scaler)
    compile: bool = False  # torch.compile the model
    seed: int = 0  # weights, data order and noise; resumes restore the RNG states
    device: str = "auto"  # auto: cuda, then mps, then cpu
    log_every: int = field(default=50, metadata=check(min=1))  # steps between scalar logs
    eval_every: int = field(default=1000, metadata=check(min=1))  # steps between evaluations (best.pt)
    image_every: int = field(default=1000, metadata=check(min=1))  # steps between image grids
    checkpoint_every: int = field(default=1000, metadata=check(min=1))  # steps between last.pt writes
    max_minutes: float | None = field(default=None, metadata=check(min=0.0))  # wall-clock budget
    guide_at: float | None = field(default=None, metadata=check(min=0.0, max=1.0, help=(
        "stage two: at this fraction of train.steps the run keeps its EMA weights as its autoguidance guide (Karras "
        "et al. 2024), saved in every later checkpoint and exported with the model; null: no guide")))
    stop_on_divergence: bool = field(default=False, metadata=check(help=(
        "a loss over 100 times its running band's upper edge (finite, so no NaN stop) is a warning once; true "
        "stops there instead, exit 2, last.pt put back to the last healthy checkpoint as after a NaN")))


# ----------------------------------------------------------------------------- stage one


@dataclass
class AEModelConfig:
    """Autoencoder architecture; see ``autoencoders.build_autoencoder``."""

    kind: Literal["vae", "rae", "ae"] = "vae"  # VAE, regularised AE (Ghosh et al.), plain AE
    base_channels: int = field(default=16, metadata=check(min=1))  # full-resolution width: keep it lean
    channel_mults: list[int] = field(default_factory=lambda: [1, 2, 4])  # per level; f = 2^(levels-1)
    num_res_blocks: int = field(default=1, metadata=check(min=0))  # per level
    latent_channels: int = field(default=4, metadata=check(min=1))  # C of the C×H/f×W/f latents
    latent_dim: int | None = field(default=None, metadata=check(min=1))  # vector latents via a flattening head
    attention: bool = False  # self-attention in the middle block
    dropout: float = field(default=0.0, metadata=check(min=0.0, max=1.0))  # inside the residual blocks
    spectral_norm: bool = False  # RAE decoder regulariser, applied to the decoder's convolutions


@dataclass
class AELossConfig:
    """Stage-one objective; see ``autoencoders.losses.AutoencoderLoss``."""

    reconstruction: Literal["l1", "l2"] = "l2"  # pixel loss
    reconstruction_weight: float = field(default=1.0, metadata=check(min=0.0))  # its weight
    kl_weight: float = field(default=1e-6, metadata=check(min=0.0))  # β (VAE)
    kl_warmup_steps: int = field(default=0, metadata=check(min=0))  # β ramps linearly from 0
    latent_l2_weight: float = field(default=1e-4, metadata=check(min=0.0))  # RAE: ‖z‖² penalty
    decoder_regulariser: Literal["none", "grad_penalty", "weight_decay", "spectral_norm"] = "none"  # RAE
    decoder_reg_weight: float = field(default=1e-6, metadata=check(min=0.0))  # its weight
    perceptual_weight: float = field(default=0.0, metadata=check(min=0.0))  # LPIPS; needs its backbone
    perceptual_net: Literal["alex", "vgg", "squeeze"] = "vgg"  # LPIPS backbone
    disc_weight: float = field(default=0.0, metadata=check(min=0.0))  # PatchGAN; 0 switches it off
    disc_start: int = field(default=0, metadata=check(min=0))  # step the discriminator joins
    disc_layers: int = field(default=3, metadata=check(min=1))  # PatchGAN depth
    disc_channels: int = field(default=64, metadata=check(min=1))  # PatchGAN width


@dataclass
class AERunConfig:
    """``train_ae.py``: one autoencoder run."""

    name: str = "shapes_ae_kl"  # the run folder is <out_dir>/<name>
    out_dir: str = field(default="runs", metadata=check(path="folder"))  # parent of run folders
    data: DataConfig = field(default_factory=DataConfig)
    model: AEModelConfig = field(default_factory=AEModelConfig)
    loss: AELossConfig = field(default_factory=AELossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval_samples: int = field(default=2000, metadata=check(min=1))  # test images scored at each evaluation


# ----------------------------------------------------------------------------- stage two


@dataclass
class DiffusionConfig:
    """``latentdiff.GaussianDiffusion`` arguments."""

    num_timesteps: int = field(default=1000, metadata=check(min=1))  # T
    beta_schedule: Literal["linear", "cosine"] = "linear"  # Ho et al. 2020 / Nichol & Dhariwal 2021
    beta_start: float = field(default=1e-4, metadata=check(min=0.0, max=1.0))  # β_1 (linear)
    beta_end: float = field(default=0.02, metadata=check(min=0.0, max=1.0))  # β_T (linear)
    variance: Literal["beta_tilde", "beta"] = "beta_tilde"  # reverse σ_t²: posterior β̃_t or β_t
    prediction: Literal["eps", "v", "x0"] = "eps"  # what the network outputs
    loss_weighting: Literal["simple", "vlb", "min_snr"] = "simple"  # L_simple (Eq. 14), Eq. 12 weights, Min-SNR
    min_snr_gamma: float = field(default=5.0, metadata=check(min=0.0))  # γ of Min-SNR (Hang et al. 2023)


@dataclass
class DenoiserConfig:
    """The ε network: a UNet for spatial latents, a residual MLP for vector latents and points."""

    kind: Literal["auto", "unet", "mlp"] = "auto"  # auto: unet for C×H×W inputs, mlp for vectors
    channels: int = field(default=64, metadata=check(min=1))  # UNet width of the first level
    channel_mults: list[int] = field(default_factory=lambda: [1, 2])  # UNet width multiplier per level
    num_res_blocks: int = field(default=2, metadata=check(min=1))  # UNet residual blocks per level
    attention_resolutions: list[int] = field(default_factory=lambda: [4])  # feature-map sides with attention
    num_heads: int = field(default=4, metadata=check(min=1))  # attention heads
    dropout: float = field(default=0.0, metadata=check(min=0.0, max=1.0))  # inside the residual blocks
    hidden: int = field(default=256, metadata=check(min=1))  # MLP width
    num_blocks: int = field(default=4, metadata=check(min=1))  # MLP residual blocks


@dataclass
class AERefConfig:
    """The frozen stage-one autoencoder. ``run: null`` trains directly on the data (2-D toys)."""

    run: str | None = field(default=None, metadata=check(help=(
        "a train_ae.py run folder; a resumed run whose folder holds its autoencoder/ copy trains on that copy when "
        "this folder is gone")))
    checkpoint: Literal["best", "last"] = "best"  # which stage-one checkpoint to freeze
    use_ema: bool = True  # its EMA weights where present


@dataclass
class LatentConfig:
    """Latent cache and normalisation (``latentdiff.latents``)."""

    normalisation: Literal["scale", "channel", "none"] = "scale"  # global 1/std, per-channel mean/std, none
    cache_dir: str | None = field(default=None, metadata=check(path="folder"))  # None: <out_dir>/latent_cache
    encode_batch_size: int = field(default=256, metadata=check(min=1))  # images per encoder batch


@dataclass
class ConditioningConfig:
    """Attribute conditioning for classifier-free guidance."""

    enabled: bool = False  # condition the denoiser on the dataset's attributes
    drop_attribute_prob: float = field(default=0.1, metadata=check(min=0.0, max=1.0))  # each, independently
    drop_all_prob: float = field(default=0.1, metadata=check(min=0.0, max=1.0))  # all at once: unconditional


@dataclass
class SampleConfig:
    """Defaults for sample grids logged during training and for ``sample.py``."""

    sampler: Literal["ddpm", "ddim", "dpm_solver++"] = "ddim"  # ancestral (Alg. 2), DDIM (Eq. 12), DPM-Solver++(2M)
    steps: int | None = field(default=50, metadata=check(min=1))  # None: all T
    eta: float = field(default=0.0, metadata=check(min=0.0))  # DDIM noise: 0 deterministic, 1 ancestral
    num: int = field(default=64, metadata=check(min=1))  # images in the logged grids
    guidance_scale: float = 3.0  # classifier-free guidance w (1 conditional, 0 unconditional)
    # guide only where lo <= t/T <= hi (Kynkäänniemi et al. 2024), the conditional model elsewhere; null: everywhere
    guidance_interval: tuple[float, float] | None = field(default=None, metadata=check(min=0.0, max=1.0))
    # attributes not asked for: "model" leaves them to the network (guidance sharpens them), "data" draws them from
    # the training data's p(unasked | asked) and conditions on all (latentdiff.conditioning.AttributePrior)
    unasked: Literal["model", "data"] = "model"
    # autoguidance w_a (Karras et al. 2024): D + (w_a − 1)(D − G), G the run's guide (train.guide_at, or sample.py
    # --guide RUN); 1: off. In the guidance interval, with classifier-free guidance or without; not in the grids
    # logged while training (the guide may not exist yet)
    autoguidance_scale: float = field(default=1.0, metadata=check(min=0.0))
    seed: int = 0  # fixed noise of the logged grids


@dataclass
class LDMRunConfig:
    """``train_diffusion.py``: one latent diffusion run (or a diffusion directly on data when ae.run is null)."""

    name: str = "shapes_ldm_kl"  # the run folder is <out_dir>/<name>
    out_dir: str = field(default="runs", metadata=check(path="folder"))  # parent of run folders, latent cache, judges
    data: DataConfig = field(default_factory=DataConfig)
    ae: AERefConfig = field(default_factory=AERefConfig)
    latents: LatentConfig = field(default_factory=LatentConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    bound_every: int = field(default=2000, metadata=check(min=1))  # bits/dim on held-out latents
    bound_examples: int = field(default=256, metadata=check(min=1))  # held-out latents in the bound


# ----------------------------------------------------------------------------- joint training


@dataclass
class StartConfig:
    """The trained two-stage VAE run a joint run starts from (LSGM's warm start)."""

    run: str | None = field(default=None, metadata=check(help=(
        "a train_diffusion.py run (or its export.py folder) on a VAE's latents; its diffusion, denoiser, conditioning, "
        "sample, data and latents sections become the joint run's")))
    checkpoint: Literal["best", "last"] = "last"  # which stage-two checkpoint to start from
    use_ema: bool = True  # start from its EMA weights (the autoencoder's are the frozen copy it was trained on)


@dataclass
class JointConfig:
    """The bound trained end to end (``latentdiff.tasks.JointTask``; docs/math.md, "Joint training")."""

    # "likelihood": the denoiser trains on the bound itself, as the autoencoder does; "reweighted": on its recipe's
    # objective (diffusion.loss_weighting) at uniform t, the autoencoder on the likelihood-weighted one (LSGM's
    # split, which diverged on Fashion-MNIST: docs/results.md, "Joint training")
    denoiser_objective: Literal["likelihood", "reweighted"] = field(default="likelihood", metadata=check(help=(
        "likelihood: the denoiser trains on the bound too; reweighted: on its recipe's loss (LSGM's split)")))
    importance_sampling: bool = True  # t ~ r ∝ λ_t ᾱ_t for the cross-entropy term (LSGM §3.3); false: uniform t
    eval_examples: int = field(default=256, metadata=check(min=1))  # held-out images in each evaluation's bound
    bound_timesteps: int | None = field(default=100, metadata=check(min=1))  # per example; null: the exact sum
    # after these steps the autoencoder and σ² freeze and the denoiser finishes on its recipe's loss over the frozen
    # encoder's z ~ q(z|x): the prior catches up with the moved latents, as stage two did after stage one
    autoencoder_steps: int | None = field(default=None, metadata=check(min=1, help=(
        "steps that train the autoencoder, then the denoiser alone on its stage-two loss; null: joint to the end")))


@dataclass
class JointRunConfig:
    """``train_joint.py``: encoder, decoder and latent denoiser fine-tuned together on the two-stage bound. The
    defaults are configs/fashion_mnist/joint_kl.yaml's, the measured recipe (docs/results.md, "Joint training")."""

    name: str = "fashion_mnist_joint_kl"  # the run folder is <out_dir>/<name>
    out_dir: str = field(default="runs", metadata=check(path="folder"))  # parent of run folders
    start: StartConfig = field(default_factory=StartConfig)
    joint: JointConfig = field(default_factory=JointConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=3941, batch_size=64, lr=3e-4, warmup_steps=100, log_every=100, eval_every=1000, image_every=1000,
        checkpoint_every=500))


# ----------------------------------------------------------------------------- post-hoc classifier


@dataclass
class ClassifierModelConfig:
    """The noise-conditional attribute classifier (``latentdiff.latent_classifier``)."""

    width: int = field(default=64, metadata=check(min=1))  # CNN channels (spatial latents) or MLP width
    num_blocks: int = field(default=2, metadata=check(min=1))  # residual blocks (CNN: 2× pooling after each)
    dropout: float = field(default=0.0, metadata=check(min=0.0, max=1.0))  # inside the residual blocks


@dataclass
class ClassifierRunConfig:
    """``train_classifier.py --run RUN``: p(attributes | x_t, t) on RUN's latents, for classifier guidance."""

    name: str = "classifier"  # the classifier folder is <RUN>/<name>
    model: ClassifierModelConfig = field(default_factory=ClassifierModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=3000, batch_size=128, lr=1e-3, warmup_steps=100, lr_schedule="cosine", log_every=100,
        eval_every=500, checkpoint_every=500, max_minutes=10))
    eval_examples: int = field(default=2000, metadata=check(min=1))  # held-out latents scored at each evaluation
