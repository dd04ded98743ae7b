"""Rules between keys: what one field's metadata cannot say.

Bounds that exclude their end (β_1 > 0), limits that depend on other keys (sample.steps ≤ diffusion.num_timesteps)
and on the dataset. Each rule mirrors a check of a constructor (GaussianDiffusion, the beta schedules, the samplers,
UNet, the autoencoder builders and losses, the dataset builders), so that a bad value is refused here, naming its
key, before any work starts, and a constructor's own check never fires first for a config value.

A rule is one function registered with ``@constraint(Section, "key", "what is required")``: it gets the built section
and returns None or the problem. ``parsing.from_dict`` applies the rules of each section it builds, in this file's
order, and docs/config.md lists them. tests/test_config_constraints.py breaks each rule with a config and expects
exit 2 from ``--print-config``; its table must cover every rule.
"""

import json
from pathlib import Path

import yaml

from latentdiff.config.parsing import ConfigError, constraint
from latentdiff.config.sections import (
    AEModelConfig,
    AERunConfig,
    DataConfig,
    DenoiserConfig,
    DiffusionConfig,
    JointRunConfig,
    LDMRunConfig,
    SampleConfig,
    TrainConfig,
)

# Samplers that take DDIM's η: a new sampler name that takes η is one more entry here.
ETA_SAMPLERS = ("ddim",)
# Stage-one decoder regularisers that belong to the RAE (autoencoders.losses.REGULARISERS without "none").
RAE_REGULARISERS = ("grad_penalty", "weight_decay", "spectral_norm")
# Datasets of 2-D points (no image size, no autoencoder: a diffusion directly on the points).
POINT_DATASETS = ("swissroll", "moons", "gaussian_mixture")


# -- diffusion (GaussianDiffusion, schedules.make_beta_schedule / linear_beta_schedule) -------------------

@constraint(DiffusionConfig, "num_timesteps", "at least 2")
def _(d):
    if d.num_timesteps < 2:
        return f"{d.num_timesteps} is below 2; the reverse process needs at least two timesteps"


@constraint(DiffusionConfig, "beta_start", "> 0 for the linear schedule")
def _(d):
    if d.beta_schedule == "linear" and not d.beta_start > 0:
        return f"{d.beta_start!r} must be above 0 for the linear schedule (β_1 = 0 adds no noise)"


@constraint(DiffusionConfig, "beta_end", "< 1 and ≥ diffusion.beta_start for the linear schedule")
def _(d):
    if d.beta_schedule != "linear":
        return None
    if not d.beta_end < 1:
        return f"{d.beta_end!r} must be below 1 for the linear schedule (β_T = 1 destroys the signal)"
    if d.beta_end < d.beta_start:
        return f"{d.beta_end!r} is below diffusion.beta_start={d.beta_start!r}; the schedule must not decrease"


@constraint(DiffusionConfig, "prediction", "v or x0 with the cosine schedule")
def _(d):
    # ᾱ_T of the cosine schedule is ~2e-9 (β clipped at 0.999): x̂0 = (x_T − √(1−ᾱ_T) ε̂) / √ᾱ_T turns an ε error
    # of 0.04 at t = T into an x̂0 error of ~900, which pixel-space samplers clip to [-1, 1] and latents cannot.
    # Measured on the Fashion-MNIST VAE's latents (bench/stage_two_recipes.py, 20-minute point): FD 66 against
    # 4.0 for the linear schedule, with DDIM η = 0 and η = 1 alike.
    if d.beta_schedule == "cosine" and d.prediction == "eps":
        return ("'eps' with diffusion.beta_schedule=cosine: that schedule's ᾱ_T ≈ 2e-9 magnifies the ε error at "
                "t = T some 2·10⁴ times in x̂0, which latents are not clipped against; use diffusion.prediction=v "
                "(or x0), or the linear schedule")


@constraint(DiffusionConfig, "min_snr_gamma", "> 0")
def _(d):
    if not d.min_snr_gamma > 0:
        return f"{d.min_snr_gamma!r} must be above 0 (γ clips the SNR weights from above)"


# -- training (optim.EMA) ---------------------------------------------------------------------------------

@constraint(TrainConfig, "ema_sigma_rel", "in (0, 0.289), and only with an EMA (ema_decay not null)")
def _(t):
    if t.ema_sigma_rel is None:
        return None
    if not 0 < t.ema_sigma_rel < 12 ** -0.5:
        return (f"{t.ema_sigma_rel!r} must be in (0, 0.289): the width of the power-function EMA's profile τ^γ as a "
                f"fraction of the run, 0.289 being the plain average of the whole run (γ = 0); Karras et al. 2024 use "
                f"0.05-0.15")
    if t.ema_decay is None:
        return "set with train.ema_decay=null (no EMA): leave ema_sigma_rel unset, or give ema_decay a value"


@constraint(TrainConfig, "guide_at", "in (0, 1): a fraction of train.steps")
def _(t):
    if t.guide_at is not None and not 0 < t.guide_at < 1:
        return (f"{t.guide_at!r} must be in (0, 1): the fraction of train.steps at which the run keeps its EMA "
                f"weights as the autoguidance guide (e.g. 0.25), or null for no guide")


@constraint(AERunConfig, "train.guide_at", "null for stage one (only a diffusion model has a guide)")
def _(r):
    if r.train.guide_at is not None:
        return "an autoencoder has no autoguidance guide; leave train.guide_at unset for train_ae.py"


# -- sampling (GaussianDiffusion.sample, schedules.spaced_timesteps) ------------------------------------

@constraint(SampleConfig, "eta", f"0 unless sample.sampler is one of {', '.join(ETA_SAMPLERS)}")
def _(s):
    if s.eta != 0 and s.sampler not in ETA_SAMPLERS:
        return (f"{s.eta!r} applies to the {' / '.join(ETA_SAMPLERS)} sampler only (sample.sampler is "
                f"{s.sampler!r}); set sample.eta=0 or sample.sampler={ETA_SAMPLERS[0]}")


@constraint(SampleConfig, "guidance_interval", "[lo, hi] with lo < hi (fractions of T)")
def _(s):
    if s.guidance_interval is not None and not s.guidance_interval[0] < s.guidance_interval[1]:
        return (f"{list(s.guidance_interval)!r}: give [lo, hi] with lo < hi, fractions of T where guidance acts "
                f"(e.g. [0.0, 0.6]), or null to guide everywhere")


@constraint(LDMRunConfig, "sample.steps", "≤ diffusion.num_timesteps")
def _(r):
    if r.sample.steps is not None and r.sample.steps > r.diffusion.num_timesteps:
        return (f"{r.sample.steps} is more than diffusion.num_timesteps={r.diffusion.num_timesteps}; "
                f"use at most that many (or null for all)")


@constraint(LDMRunConfig, "sample.autoguidance_scale", "1 unless train.guide_at keeps a guide")
def _(r):
    if r.sample.autoguidance_scale != 1 and r.train.guide_at is None:
        return (f"{r.sample.autoguidance_scale!r} needs a guide, and train.guide_at is null; set train.guide_at "
                f"(e.g. 0.25) or sample.autoguidance_scale=1 (a guide from another run: sample.py --guide RUN)")


# -- the denoiser (latentdiff.nets.UNet, builders.build_denoiser) ----------------------------------------

@constraint(DenoiserConfig, "channel_mults", "at least one multiplier, each ≥ 1")
def _(d):
    if not d.channel_mults or min(d.channel_mults) < 1:
        return f"{d.channel_mults!r}: give at least one multiplier, each at least 1"


@constraint(DenoiserConfig, "attention_resolutions", "feature-map sides ≥ 1")
def _(d):
    if any(r < 1 for r in d.attention_resolutions):
        return f"{d.attention_resolutions!r}: sides of feature maps are at least 1"


@constraint(LDMRunConfig, "denoiser.num_heads", "divides every UNet level's width (channels × mult) when it attends")
def _(r):
    d = r.denoiser
    points = r.ae.run is None and r.data.name in POINT_DATASETS  # auto picks the MLP: no attention
    if d.kind == "mlp" or (d.kind == "auto" and points) or not d.attention_resolutions:
        return None
    widths = [d.channels * m for m in d.channel_mults]
    bad = [w for w in widths if w % d.num_heads]
    if bad:
        return (f"{d.num_heads} heads do not split the UNet widths {widths} (denoiser.channels × "
                f"denoiser.channel_mults); choose a number of heads dividing every width")


@constraint(LDMRunConfig, "conditioning.enabled", "only for a dataset with attributes (not swissroll; "
            "image_folder with data.options.attributes_csv)")
def _(r):
    if not r.conditioning.enabled:
        return None
    if r.data.name == "swissroll" or (r.data.name == "image_folder" and not r.data.options.get("attributes_csv")):
        return f"dataset {r.data.name!r} has no attributes to condition on" + (
            "; give data.options.attributes_csv" if r.data.name == "image_folder" else "")


@constraint(LDMRunConfig, "denoiser.kind", "not unet for 2-D point data")
def _(r):
    if r.denoiser.kind == "unet" and r.ae.run is None and r.data.name in POINT_DATASETS:
        return f"a unet needs C×H×W inputs; {r.data.name} gives 2-D points (use mlp or auto)"


@constraint(LDMRunConfig, "ae.run", "an existing folder, unless <out_dir>/<name> holds the run to resume (last.pt) "
            "and its autoencoder/ copy")
def _(r):
    if r.ae.run is None or Path(r.ae.run).expanduser().is_dir():
        return None
    run = Path(r.out_dir).expanduser() / r.name  # resumed on the run's own copy (stages.frozen_autoencoder)
    if (run / "checkpoints" / "last.pt").is_file() and (run / "autoencoder" / "model.safetensors").is_file():
        return None
    return (f"folder {r.ae.run!r} does not exist; train the autoencoder first (train_ae.py) or point ae.run at its "
            f"run folder")


DEFAULT_IMAGE_SIZES = {"celeba": 64, "image_folder": 64}  # the others' default side is 32


def ae_latent_shape(run: str | None) -> tuple | None:
    """The latent shape of the autoencoder run ``run`` from its config.yaml (None when it cannot be read):
    (latent_dim,), or (C, S/f, S/f) with S its image side and f = 2^(levels-1)."""
    if run is None:
        return None
    try:
        data = yaml.safe_load((Path(run).expanduser() / "config.yaml").read_text())
        model, images = data.get("model", {}), data.get("data", {})
        if model.get("latent_dim") is not None:
            return (int(model["latent_dim"]),)
        side = images.get("image_size") or DEFAULT_IMAGE_SIZES.get(images.get("name"), 32)
        factor = 2 ** (len(model.get("channel_mults", [1, 2, 4])) - 1)
        return (int(model.get("latent_channels", 4)), side // factor, side // factor)
    except (OSError, yaml.YAMLError, AttributeError, TypeError, ValueError):
        return None  # not readable here: the checkpoint's own checks speak later


def _unet_latent_side(r) -> int | None:
    """The side of the latents a UNet denoiser of run config ``r`` will see, when it is known before any work."""
    shape = ae_latent_shape(r.ae.run)
    if shape is None or len(shape) != 3 or r.denoiser.kind == "mlp":
        return None
    return shape[-1]


@constraint(LDMRunConfig, "denoiser.channel_mults", "2^(levels−1) divides the autoencoder's latent side")
def _(r):
    side = _unet_latent_side(r)
    factor = 2 ** (len(r.denoiser.channel_mults) - 1)
    if side is not None and side % factor:
        return (f"{r.denoiser.channel_mults!r} gives {len(r.denoiser.channel_mults)} UNet levels, which halve the "
                f"side {len(r.denoiser.channel_mults) - 1} times, but the latents of ae.run are {side}×{side}; "
                f"use fewer levels")


@constraint(LDMRunConfig, "denoiser.attention_resolutions", "sides of UNet levels of the autoencoder's latents")
def _(r):
    side = _unet_latent_side(r)
    if side is None:
        return None
    sides = [side // 2**level for level in range(len(r.denoiser.channel_mults))]
    unknown = sorted(set(r.denoiser.attention_resolutions) - set(sides))
    if unknown:
        return (f"{unknown} match no UNet level: the latents of ae.run are {side}×{side}, so the levels have "
                f"sides {sides}")


# -- joint training (stages.train_joint) -------------------------------------------------------------------

@constraint(JointRunConfig, "start.run", "a train_diffusion.py run on a VAE's latents")
def _(r):
    if r.start.run is None:
        return "is required: the stage-two run to start from (train both stages first), e.g. start.run=runs/<name>"
    try:  # the run's own copy of its autoencoder says which kind it is, without loading a checkpoint
        kind = json.loads((Path(r.start.run).expanduser() / "autoencoder" / "config.json").read_text())["model"]["kind"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # not readable here: the stage's own checks speak when it loads the run
    if kind != "vae":
        return (f"{r.start.run} trains on a deterministic autoencoder (kind {kind}): it has no posterior entropy "
                f"H[q(z|x)], hence no bound to train end to end; start from a VAE run")


@constraint(JointRunConfig, "train.guide_at", "null (joint training moves the latents a guide was trained on)")
def _(r):
    if r.train.guide_at is not None:
        return ("a joint run changes the encoder, so an EMA snapshot of its denoiser would guide on other latents; "
                "leave train.guide_at unset")


# -- stage one (autoencoders.models.check_architecture, autoencoders.losses) -----------------------------

@constraint(AEModelConfig, "channel_mults", "1 to 4 multipliers, each ≥ 1 (f = 1, 2, 4 or 8)")
def _(m):
    if not 1 <= len(m.channel_mults) <= 4 or min(m.channel_mults) < 1:
        return (f"{m.channel_mults!r}: give 1 to 4 multipliers, each at least 1 (the downsampling factor "
                f"f = 2^(levels-1) must be 1, 2, 4 or 8)")


@constraint(AEModelConfig, "dropout", "< 1")
def _(m):
    if not m.dropout < 1:
        return f"{m.dropout!r} must be below 1 (dropout 1 zeroes every activation)"


@constraint(AERunConfig, "data.image_size", "divisible by the autoencoder's downsampling factor")
def _(r):
    size, mults = r.data.image_size, r.model.channel_mults
    if size is not None and mults:
        factor = 2 ** (len(mults) - 1)
        if size % factor:
            return (f"{size} is not divisible by the downsampling factor f={factor} of "
                    f"model.channel_mults={mults}; resize the images or use fewer levels")


@constraint(AERunConfig, "data.name", "images, not 2-D points")
def _(r):
    if r.data.name in POINT_DATASETS:
        return f"{r.data.name} is 2-D point data; an autoencoder needs images (train_diffusion.py takes points)"


@constraint(AERunConfig, "loss.decoder_regulariser", "an RAE regulariser only with model.kind rae; "
            "spectral_norm only with model.spectral_norm true")
def _(r):
    reg = r.loss.decoder_regulariser
    if reg in RAE_REGULARISERS and r.model.kind != "rae":
        return f"{reg!r} is an RAE regulariser but model.kind is {r.model.kind!r}; use model.kind=rae or none"
    if reg == "spectral_norm" and not r.model.spectral_norm:
        return "spectral_norm needs the decoder built with it: set model.spectral_norm=true"


# -- datasets (latentdiff.data builders) --------------------------------------------------------------

@constraint(DataConfig, "image_size", "unset for 2-D point data; ≥ 8 for shapes")
def _(d):
    if d.name in POINT_DATASETS and d.image_size is not None:
        return f"{d.image_size}: 2-D point data ({d.name}) has no image size; leave it unset (null)"
    if d.name == "shapes" and d.image_size is not None and d.image_size < 8:
        return f"{d.image_size}: shapes need at least 8 pixels a side"


@constraint(DataConfig, "root", "a folder of images for image_folder")
def _(d):
    if d.name == "image_folder" and d.root is None:
        return "image_folder needs data.root, the folder of images"


@constraint(DataConfig, "download", "false for image_folder (a local folder has nothing to fetch)")
def _(d):
    if d.name == "image_folder" and d.download:
        return "image_folder has nothing to download; set data.download=false"


def _number(d: DataConfig, name: str, default, integer: bool = False):
    """``data.options[name]`` (or ``default``) checked to be a number, for the option rules below."""
    v = d.options.get(name, default)
    if isinstance(v, bool) or not isinstance(v, int if integer else int | float):
        raise ConfigError(f"data.options.{name}: expected {'an integer' if integer else 'a number'}, got {v!r}")
    return v


@constraint(DataConfig, "options.small", "shapes: 0 < small < large ≤ 0.5")
def _(d):
    if d.name == "shapes":
        small, large = _number(d, "small", 0.125), _number(d, "large", 0.25)
        if not 0 < small < large <= 0.5:
            return f"shapes need 0 < small < large <= 0.5 (fractions of the side), got {small}, large={large}"


@constraint(DataConfig, "options.antialias", "shapes: ≥ 1")
def _(d):
    if d.name == "shapes" and _number(d, "antialias", 1, integer=True) < 1:
        return f"{d.options['antialias']} must be at least 1 (1 = off)"


@constraint(DataConfig, "options.channels", "image_folder: 1 or 3")
def _(d):
    if d.name == "image_folder" and d.options.get("channels", 3) not in (1, 3):
        return f"{d.options['channels']!r} must be 1 or 3"


@constraint(DataConfig, "options.on_bad_file", "image_folder: skip or error")
def _(d):
    if d.name == "image_folder" and d.options.get("on_bad_file", "skip") not in ("skip", "error"):
        return f"{d.options['on_bad_file']!r} must be 'skip' or 'error'"


@constraint(DataConfig, "options.test_fraction", "image_folder: 0 ≤ test_fraction < 1")
def _(d):
    if d.name == "image_folder" and not 0 <= _number(d, "test_fraction", 0.0) < 1:
        return f"{d.options['test_fraction']} must be in [0, 1)"


@constraint(DataConfig, "options.num_components", "gaussian_mixture: ≥ 1")
def _(d):
    if d.name == "gaussian_mixture" and _number(d, "num_components", 8, integer=True) < 1:
        return f"{d.options['num_components']} must be at least 1"
