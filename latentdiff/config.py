"""Typed run configs: dataclasses filled from a YAML recipe plus dotted command-line overrides.

One config file is one run. A recipe is a YAML mapping whose keys mirror the dataclass fields; a
command line adds ``key.sub=value`` overrides (values parsed as YAML, so ``train.steps=100`` is an
int and ``model.channel_mults=[1,2]`` a list). Everything is validated before any work starts:
an unknown key (with the closest valid name), a wrong type, a value out of range or a missing
file is one :class:`ConfigError` line naming the key; the scripts print it and exit with status 2.

Field checks live in the field's metadata, next to the default they constrain::

    steps: int = field(default=1000, metadata=check(min=1))
    kind: Literal["vae", "rae", "ae"] = "vae"                 # choices come from the Literal
    root: str | None = field(default=None, metadata=check(path="dir"))
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config problem, already phrased as one line for the user."""


def check(*, min=None, max=None, below=None, path=None, power_of_two=False, help=None):  # noqa: A002
    """Field metadata: numeric bounds (``min``/``max`` inclusive, ``below`` exclusive), ``path="file"|"dir"``
    existence or ``path="folder"`` (a folder or nothing yet, never a file), powers of two.

    Every float field, with metadata or not, must also be finite: NaN and infinity are refused in ``_coerce``.
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


# ----------------------------------------------------------------------------- building and checking


def _type_name(tp) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value, tp, key: str):
    """Return ``value`` checked (and mildly coerced: int -> float, list -> tuple) against type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        raise errors[0] if len(errors) == 1 else ConfigError(
            f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}{hint}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):  # nan would train or sample silently into black images
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")  # a bug in a config class


def _check_value(value, meta: dict, key: str):
    if value is None or not meta:
        return
    items = value if isinstance(value, list | tuple) else [value]
    for v in items:
        if meta.get("min") is not None and v < meta["min"]:
            raise ConfigError(f"{key}: {value!r} is below the minimum {meta['min']}")
        if meta.get("max") is not None and v > meta["max"]:
            raise ConfigError(f"{key}: {value!r} is above the maximum {meta['max']}")
        if meta.get("below") is not None and v >= meta["below"]:
            raise ConfigError(f"{key}: {value!r} must be below {meta['below']}")
        if meta.get("power_of_two") and (v < 1 or v & (v - 1)):
            raise ConfigError(f"{key}: {v!r} must be a power of two")
    kind = meta.get("path")
    if kind:
        p = Path(value).expanduser()
        hint = f"; {meta['help']}" if meta.get("help") else ""
        if kind == "dir" and not p.is_dir():
            raise ConfigError(f"{key}: folder {value!r} does not exist{hint}")
        if kind == "file" and not p.is_file():
            raise ConfigError(f"{key}: file {value!r} does not exist{hint}")
        if kind == "folder":
            while not p.exists() and p != p.parent:
                p = p.parent
            if not p.is_dir():
                raise ConfigError(f"{key}: {value!r} must be a folder, but {str(p)!r} is a file")


def from_dict(cls, data: dict | None, prefix: str = "", base=None):
    """Build dataclass ``cls`` from a nested dict, validating every key, type and range.

    Keys not given take the values of ``base`` (an instance of ``cls``), else the field defaults; a
    section's ``default_factory`` is its base, so a command can ship its own defaults for a shared
    section (``ClassifierRunConfig.train``).
    """
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint} (valid: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            section = getattr(base, name) if base is not None else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            kwargs[name] = from_dict(tp, data.get(name), prefix=f"{prefix}{name}.", base=section)
        elif name in data:
            value = _coerce(data[name], tp, prefix + name)
            _check_value(value, dict(f.metadata), prefix + name)
            kwargs[name] = value
        elif base is not None:
            kwargs[name] = getattr(base, name)
    obj = cls(**kwargs)
    check_constraints(obj, prefix)
    return obj


def to_dict(cfg) -> dict:
    """Plain nested dict (lists, not tuples) that YAML and ``torch.load(weights_only=True)`` accept."""

    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))


def _set_dotted(data: dict, dotted: str, value):
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{k}' is not a section")
    node[keys[-1]] = value


def load_config(cls, path: str | Path | None = None, overrides: list[str] | tuple = ()):
    """Read a YAML recipe (optional), apply ``key.sub=value`` overrides, validate, return a ``cls``."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (byte {e.object[e.start]:#04x} at "
                              f"offset {e.start}): is it a YAML recipe?") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"config file {str(path)!r} is not valid YAML{where}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        _set_dotted(data, key.strip(), value)
    return from_dict(cls, data)


def dump_yaml(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# ----------------------------------------------------------------------------- constraints across keys
#
# What one field's metadata cannot say: bounds that exclude their end (β_1 > 0), limits that depend on other
# keys (sample.steps ≤ diffusion.num_timesteps) and on the dataset. Each rule mirrors a check of a constructor
# (GaussianDiffusion, the beta schedules, the samplers, UNet, the autoencoder builders and losses, the
# dataset builders), so that a bad value is refused here, naming its key, before any work starts, and a
# constructor's own check never fires first for a config value. tests/test_config_constraints.py breaks
# each rule with a config and expects exit 2 from ``--print-config``.

# Samplers that take DDIM's η: a new sampler name that takes η is one more entry here.
ETA_SAMPLERS = ("ddim",)
# Stage-one decoder regularisers that belong to the RAE (autoencoders.losses.REGULARISERS without "none").
RAE_REGULARISERS = ("grad_penalty", "weight_decay", "spectral_norm")
# Datasets of 2-D points (no image size, no autoencoder: a diffusion directly on the points).
POINT_DATASETS = ("swissroll", "moons", "gaussian_mixture")


@dataclass(frozen=True)
class Constraint:
    """One rule: ``check(section)`` returns None or the problem, reported as '<prefix><key>: <problem>'."""

    section: type
    key: str  # dotted, relative to the section
    rule: str  # what is required, for docs/config.md
    check: Any


CONSTRAINTS: list[Constraint] = []


def constraint(section: type, key: str, rule: str):
    def register(fn):
        CONSTRAINTS.append(Constraint(section, key, rule, fn))
        return fn
    return register


def check_constraints(cfg, prefix: str = "") -> None:
    """Apply every rule of ``CONSTRAINTS`` registered for ``type(cfg)``; the first broken one is a ConfigError.

    ``from_dict`` calls this for every section it builds (so a section checks its own keys, and a run config
    the rules that span its sections), with the section's dotted ``prefix``.
    """
    for c in CONSTRAINTS:
        if isinstance(cfg, c.section):
            problem = c.check(cfg)
            if problem:
                raise ConfigError(f"{prefix}{c.key}: {problem}")


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


# ----------------------------------------------------------------------------- reference documentation


def _field_comments(cls) -> dict[str, str]:
    """The ``# comment`` written after each field in the class source: the reference's explanations."""
    import inspect
    import io
    import tokenize

    comments, name = {}, None
    for tok in tokenize.generate_tokens(io.StringIO(inspect.getsource(cls)).readline):
        if tok.type == tokenize.NAME and tok.start[1] == 4 and name is None:
            name = tok.string  # the first name of an indented line: the field
        elif tok.type == tokenize.COMMENT and name:
            comments[name] = tok.string.lstrip("# ").strip()
        elif tok.type == tokenize.NEWLINE:
            name = None
    return comments


def reference_markdown() -> str:
    """docs/config.md: every section and key of the training commands' configs with type, default, limits and help.

    Regenerate with ``python docs/make_config_reference.py``; ``tests/test_docs.py`` fails when it is stale.
    """

    def row(key: str, f, hints, comments, default_value) -> str:
        tp = hints[f.name]
        meta = f.metadata or {}
        limits = []
        if typing.get_origin(tp) is Literal:
            limits.append("one of " + ", ".join(f"`{a}`" for a in typing.get_args(tp)))
        if meta.get("min") is not None:
            limits.append(f"≥ {meta['min']}")
        if meta.get("max") is not None:
            limits.append(f"≤ {meta['max']}")
        if meta.get("below") is not None:
            limits.append(f"< {meta['below']}")
        if meta.get("path") == "folder":
            limits.append("a folder (made if missing)")
        elif meta.get("path"):
            limits.append(f"an existing {meta['path']}")
        if meta.get("power_of_two"):
            limits.append("a power of two")
        text = "; ".join(x for x in (comments.get(f.name, ""), meta.get("help") or "") if x)
        default = yaml.safe_dump(default_value, default_flow_style=True).strip().removesuffix("...").strip()
        type_name = (_type_name(tp) if typing.get_origin(tp) is not Literal else "str").replace("|", "or")
        return f"| `{key}` | {type_name} | `{default}` | {', '.join(limits)} | {text} |"

    lines = ["# Configuration reference", "",
             "Generated from the dataclasses in `latentdiff/config.py` by `python docs/make_config_reference.py`;",
             "do not edit by hand. Every key can be set in a recipe's YAML or on the command line as a dotted",
             "override (`train.steps=500`).", ""]
    for command, run_cls in (("train_ae.py", AERunConfig), ("train_diffusion.py", LDMRunConfig),
                             ("train_classifier.py", ClassifierRunConfig)):
        lines += [f"## `{command}` — `{run_cls.__name__}`", "", run_cls.__doc__.strip(), ""]
        sections = [("", run_cls, run_cls())]  # defaults read from an instance: a command may set its own
        while sections:
            prefix, cls, instance = sections.pop(0)
            hints = typing.get_type_hints(cls)
            comments = _field_comments(cls)
            rows, nested = [], []
            for f in dataclasses.fields(cls):
                if dataclasses.is_dataclass(hints[f.name]):
                    nested.append((f"{prefix}{f.name}.", hints[f.name], getattr(instance, f.name)))
                else:
                    rows.append(row(prefix + f.name, f, hints, comments, getattr(instance, f.name)))
            if rows:
                title = f"`{prefix.rstrip('.')}` — {cls.__doc__.strip().splitlines()[0]}" if prefix else "top level"
                lines += [f"### {title}", "", "| key | type | default | allowed | meaning |",
                          "|---|---|---|---|---|", *rows, ""]
            sections = nested + sections
    lines += ["## Rules between keys", "",
              "Checked together with the keys above, before any work (`latentdiff.config.CONSTRAINTS`): each mirrors",
              "a check of a constructor, so a bad value is refused here naming its key.", "",
              "| key | rule |", "|---|---|"]
    for c in CONSTRAINTS:
        for key in _dotted_keys(c):
            lines.append(f"| `{key}` | {c.rule} |")
    return "\n".join(lines) + "\n"


def _dotted_keys(c: Constraint) -> list[str]:
    """The full dotted keys a rule applies to, over the three commands' configs (each listed once)."""
    def prefixes(cls, section, prefix=""):
        if cls is section:
            yield prefix
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                yield from prefixes(hints[f.name], section, f"{prefix}{f.name}.")

    keys = {p + c.key for run in (AERunConfig, LDMRunConfig, ClassifierRunConfig) for p in prefixes(run, c.section)}
    return sorted(keys)
