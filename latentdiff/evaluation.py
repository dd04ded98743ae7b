"""Evaluation of trained runs as a library: what ``evaluate.py`` prints and writes, and what bench/ reuses.

    from latentdiff.evaluation import EvalOptions, evaluate_run
    result = evaluate_run(EvalOptions(run="runs/shapes_ldm_kl", num=1000))    # the dict evaluate.py writes

``Scorer`` compares image (or point) sets with one reference set through the judge's features and heads
(Fréchet distance, precision/recall, attribute accuracy and diversity, Inception FD where weights exist);
``likelihood`` gives the diffusion bound on held-out latents and, for VAEs, the two-stage bound on pixels;
``fit_gmm`` is the ex-post Gaussian-mixture baseline. See evaluate.py's docstring for every key of the result.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from latentdiff.baselines import GaussianMixturePrior, sklearn_available
from latentdiff.builders import build_data
from latentdiff.bundle import is_bundle
from latentdiff.checkpoints import load_checkpoint, write_text_atomic
from latentdiff.cli import check_autoguidance_flags, check_output_path
from latentdiff.config import DataConfig, from_dict
from latentdiff.diffusion import check_guidance_interval
from latentdiff.latents import LatentNormaliser
from latentdiff.loading import ldm_parts_from_checkpoint, load_autoencoder
from latentdiff.metrics.classifier import (
    attribute_accuracy,
    diversity_by_value,
    judge_path,
    load_or_train_classifier,
    normalised_entropy,
)
from latentdiff.metrics.distribution import (
    frechet_distance,
    mean_pairwise_distance,
    precision_recall,
    sliced_wasserstein,
)
from latentdiff.metrics.image import lpips_distance, mse, psnr, ssim
from latentdiff.metrics.inception import InceptionUnavailable, inception_features, load_inception
from latentdiff.metrics.likelihood import diffusion_latent_nll, fit_decoder_variance, standard_normal_nll, vae_bound
from latentdiff.pipeline import LatentDiffusion


@dataclass
class EvalOptions:
    """What to evaluate and how; the fields are ``evaluate.py``'s flags (see its ``--help``)."""

    run: str  # a train_ae.py or train_diffusion.py run folder, or an export.py folder
    num: int = 1000  # images per set, and held-out reference images
    samples: list[str] = field(default_factory=list)  # NAME=FILE.npz outside sets
    batch_size: int = 250
    sampler: str | None = None  # None: the run's (LatentDiffusion.sampling_settings), as sample.py
    steps: int | None = None
    eta: float | None = None
    guidance: float | None = None
    guidance_interval: tuple[float, float] | None = None  # None: the run's sample.guidance_interval
    autoguidance: float | None = None  # w_a; None: the run's sample.autoguidance_scale
    guide: str | None = None  # another run or export to guide with (default: the run's own guide, if any)
    seed: int = 0
    baselines: str = "auto"  # comma list of prior,gmm, or none; auto: prior for VAEs, gmm with scikit-learn
    gmm_components: int = 10
    gmm_fit_examples: int = 10000
    bound_examples: int = 256
    bound_timesteps: int | None = None  # None: the exact sum over all T
    classifier_dir: str | None = None  # judge cache (default: <run's parent>/classifiers)
    classifier_steps: int | None = None
    no_inception: bool = False
    checkpoint: str | None = None  # default: last for diffusion runs, best for autoencoder runs
    out: str | None = None  # JSON path (default: <run>/eval.json)
    no_progress: bool = False


def check_options(args: EvalOptions) -> list[str]:
    """One-line ValueErrors for values that cannot work, before any work; returns the baselines asked for."""
    if args.num < 4:
        raise ValueError(f"--num {args.num}: give at least 4 (precision/recall use each set's 3rd nearest neighbour)")
    for name in ("batch_size", "bound_examples", "gmm_components", "gmm_fit_examples"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 1")
    for name in ("steps", "bound_timesteps", "classifier_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 1")
    if args.guidance_interval is not None:
        check_guidance_interval(args.guidance_interval)
    check_autoguidance_flags(args.autoguidance, args.guide)
    check_output_path("--out", output_path(args), (".json",))  # a read-only run folder: said now, not at the end
    for item in args.samples:  # before any work: a typo here should not cost a whole evaluation
        path = item.rpartition("=")[2]
        if not Path(path).is_file():
            raise FileNotFoundError(f"--samples {item}: {path} does not exist")
    if args.baselines == "auto":
        return ["prior"] + (["gmm"] if sklearn_available() else [])
    chosen = [] if args.baselines == "none" else [b.strip() for b in args.baselines.split(",") if b.strip()]
    for b in chosen:
        if b not in ("prior", "gmm"):
            raise ValueError(f"--baselines: {b!r} is not a baseline; give a comma list of prior,gmm, or none")
    if "gmm" in chosen and not sklearn_available():
        raise ValueError("--baselines gmm needs scikit-learn: pip install 'scikit-learn>=1.3' (or leave gmm out)")
    return chosen


def output_path(args: EvalOptions) -> Path:
    """Where the result goes: ``--out``, else <run>/eval.json."""
    return Path(args.out) if args.out else Path(args.run) / "eval.json"


SAMPLER_OPTIONS = ("sampler", "steps", "eta", "guidance", "guidance_interval", "autoguidance", "guide")


def sampler_settings(args: EvalOptions, ldm: LatentDiffusion | None) -> dict | None:
    """The settings the diffusion samples are drawn with (``LatentDiffusion.sampling_settings``, which refuses
    --steps above T and guidance on an unconditional run in one line), or None for an autoencoder run."""
    if ldm is None:
        given = [f"--{name.replace('_', '-')}" for name in SAMPLER_OPTIONS if getattr(args, name) is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: sampler settings apply to a diffusion run; this is an autoencoder "
                             f"run, evaluated on its reconstructions (leave them out)")
        return None
    s = ldm.sampling_settings(args.sampler, args.steps, args.eta, args.guidance, args.guidance_interval,
                              autoguidance_scale=args.autoguidance)
    s.pop("unasked")  # each set below says how it treats attributes not asked for
    return s


def load_run(run_dir: Path, checkpoint: str | None, device):
    """(stage, config dict, autoencoder or None, LatentDiffusion or None) of a run or an exported folder."""
    if is_bundle(run_dir):
        ldm = LatentDiffusion.from_pretrained(run_dir, device=device)
        return "diffusion", ldm.config, ldm.autoencoder, ldm
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        raise FileNotFoundError(f"--run: {run_dir} has no checkpoints/ folder; give a train_ae.py or "
                                f"train_diffusion.py run folder, or an export.py folder")
    names = [checkpoint] if checkpoint else ["best", "last"]
    path = next((folder / f"{n}.pt" for n in names if (folder / f"{n}.pt").exists()), folder / "last.pt")
    state = load_checkpoint(path, map_location="cpu")
    task = state.get("task", {})
    if "latent_shape" in task:
        if checkpoint is None:  # diffusion runs sample from the last EMA weights, as sample.py does
            path = folder / "last.pt"
            state = load_checkpoint(path, map_location="cpu")
        ldm = LatentDiffusion(**ldm_parts_from_checkpoint(state, run_dir, device=device))
        return "diffusion", state["config"], ldm.autoencoder, ldm
    if "sample_shape" in task:
        return "autoencoder", state["config"], load_autoencoder(path, device=device), None
    raise ValueError(f"--run: {path} is neither an autoencoder nor a diffusion checkpoint")


def stacked(dataset, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Items start..start+n of a dataset as (x (n, ...), attrs (n, A))."""
    loader = DataLoader(Subset(dataset, range(start, min(start + n, len(dataset)))), batch_size=500)
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


@torch.no_grad()
def encode(autoencoder, images: torch.Tensor, sample: bool, generator, batch_size: int) -> torch.Tensor:
    """Latents of images, batched: z ~ q(z|x) when ``sample`` (a VAE), else the posterior mode."""
    device = next(autoencoder.parameters()).device
    out = []
    for chunk in images.split(batch_size):
        posterior = autoencoder.encode(chunk.to(device))
        out.append((posterior.sample(generator=generator) if sample else posterior.mode()).cpu())
    return torch.cat(out)


@torch.no_grad()
def decode(autoencoder, latents: torch.Tensor, batch_size: int, clamp: bool = True) -> torch.Tensor:
    """Images of latents, batched; ``clamp=False`` keeps the raw decoder means (the Gaussian decoder's)."""
    device = next(autoencoder.parameters()).device
    images = torch.cat([autoencoder.decode(z.to(device)).cpu() for z in latents.split(batch_size)])
    return images.clamp(-1, 1) if clamp else images


def outside_sets(items: list[str], image_shape, n: int) -> dict:
    """``NAME=FILE.npz`` → {name: the first n images}, checked against the run's image shape."""
    sets = {}
    for item in items:
        name, _, path = item.rpartition("=")
        name = name or Path(path).stem
        if not Path(path).is_file():
            raise FileNotFoundError(f"--samples {item}: {path} does not exist")
        with np.load(path) as f:
            if "images" not in f:
                raise ValueError(f"--samples {item}: {path} has no `images` array (write it with sample.py --npz)")
            images = torch.from_numpy(f["images"][:n]).float()
        if tuple(images.shape[1:]) != tuple(image_shape):
            raise ValueError(f"--samples {item}: images are {tuple(images.shape[1:])}, the run's data "
                             f"{tuple(image_shape)}; resize or pad them to match")
        if len(images) < n:
            print(f"note: --samples {name} holds {len(images)} images, fewer than --num {n}", flush=True)
        sets[name] = images.clamp(-1, 1)
    return sets


class Scorer:
    """Scores image (or point) sets against one reference set with the judge's features and heads."""

    def __init__(self, reference: torch.Tensor, judge=None, schema=None, inception=None, batch_size: int = 250):
        self.judge, self.schema, self.inception, self.batch_size = judge, schema, inception, batch_size
        self.points = reference.dim() == 2
        self.reference = reference
        self.ref_features = self.features(reference)[0]
        self.ref_inception = self.inception_features(reference)

    def features(self, x: torch.Tensor):
        if self.points:
            return x.double(), None
        if self.judge is None:
            return None, None
        return self.judge.judge(x, self.batch_size)

    def inception_features(self, x: torch.Tensor):
        return inception_features(self.inception, x) if self.inception is not None else None

    def __call__(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> dict:
        """Metrics of set x; ``targets`` (n, A): the attribute values asked for (or true), if any."""
        out = {"count": int(x.shape[0])}
        feats, predicted = self.features(x)
        if feats is not None:
            out["fd"] = frechet_distance(feats, self.ref_features)
            out.update(precision_recall(self.ref_features, feats, k=3))
            out["pairwise_distance"] = mean_pairwise_distance(feats)
        if self.points:
            n = min(len(x), len(self.reference))
            g = torch.Generator().manual_seed(0)
            out["sliced_wasserstein"] = sliced_wasserstein(x[:n], self.reference[:n], generator=g)
            return out
        inc = self.inception_features(x)
        out["fd_inception"] = frechet_distance(inc, self.ref_inception) if inc is not None else None
        if predicted is not None and self.schema.names:
            if targets is not None:
                out["attribute_accuracy"] = attribute_accuracy(predicted, targets, self.schema)
            out["value_entropy"] = {name: normalised_entropy(predicted[:, a], self.schema.num_values(a))
                                    for a, name in enumerate(self.schema.names)}
            groups = targets if targets is not None else predicted
            out["diversity"] = diversity_by_value(feats, predicted, groups, self.schema)
        return out


def likelihood(args, autoencoder, ldm, test_set, gmm, gmm_space: str, device) -> dict:
    """Latent diffusion bound on held-out latents and, for VAEs, the two-stage bounds on images."""
    k = min(args.bound_examples, len(test_set) // 2 if autoencoder is not None else len(test_set))
    x, _ = stacked(test_set, 0, k)
    out = {"examples": k}
    if ldm is not None:
        out["timesteps"] = args.bound_timesteps or "exact"
    normaliser = ldm.normaliser if ldm is not None else LatentNormaliser.identity()
    g_diff = torch.Generator(device=device).manual_seed(args.seed + 1)
    latent_nll = None
    if ldm is not None:
        latent_nll = diffusion_latent_nll(ldm.diffusion, ldm.denoiser, normaliser, mc_timesteps=args.bound_timesteps,
                                          generator=g_diff)
    stochastic = autoencoder is not None and not getattr(autoencoder, "is_deterministic", False)
    if not stochastic:  # a deterministic autoencoder (or none): a bound on latents only, no likelihood of x
        if ldm is not None:
            z = encode(autoencoder, x, False, None, args.batch_size) if autoencoder is not None else x
            z = normaliser.normalise(z)
            bound = ldm.diffusion.nll_bound(ldm.denoiser, z.to(device), mc_timesteps=args.bound_timesteps,
                                            generator=g_diff)
            out["latent_bpd"] = float(bound["bpd"].mean())
            out["terms"] = {t: float(bound[t].mean()) for t in ("prior", "diffusion", "decoder", "total")}
        return out
    x_fit, _ = stacked(test_set, k, k)  # other held-out images fit the decoder variance
    g_fit = torch.Generator(device=device).manual_seed(args.seed + 2)
    with torch.no_grad():
        z_fit = encode(autoencoder, x_fit, True, g_fit, args.batch_size)
        var = fit_decoder_variance(x_fit, decode(autoencoder, z_fit, args.batch_size, clamp=False))
    out["decoder_variance"] = var
    priors = {"bpd_standard_prior": standard_normal_nll}
    if gmm is not None:
        shift = normaliser if gmm_space == "normalised" else LatentNormaliser.identity()
        priors["bpd_gmm_prior"] = lambda z: gmm.nll(shift.normalise(z)) - shift.log_det_jacobian(tuple(z.shape[1:]))
    if latent_nll is not None:
        priors["bpd"] = latent_nll
    x = x.to(device)
    for key, nll in priors.items():
        g = torch.Generator(device=device).manual_seed(args.seed + 3)  # the same z draws for every prior
        bound = vae_bound(autoencoder, x, nll, var, generator=g)
        out[key] = float(bound["bpd"].mean())
        if key == "bpd":
            out["terms"] = {t: float(bound[t].mean()) for t in ("reconstruction", "neg_entropy", "latent_prior",
                                                              "total")}
            dz = math.prod(ldm.latent_shape)
            log_det = normaliser.log_det_jacobian(tuple(ldm.latent_shape))
            out["latent_bpd"] = float((bound["latent_prior"] + log_det).mean()) / (dz * math.log(2))
    return out


def reconstruction_metrics(images, recon, notes) -> dict:
    out = {"mse": float(mse(recon, images)), "psnr": float(psnr(recon, images)), "lpips": None}
    out["ssim"] = float(ssim(recon, images)) if min(images.shape[-2:]) >= 11 else None
    try:
        out["lpips"] = float(lpips_distance(recon, images, net="alex"))
    except FileNotFoundError as e:
        notes.append(f"lpips skipped: {e}")
    return out


def finite(v):
    """NaN and infinities (an empty group, a perfect reconstruction) as JSON null, recursively."""
    if isinstance(v, dict):
        return {str(k): finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [finite(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def fmt(v, digits=3):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def table(result: dict) -> str:
    """The markdown tables printed at the end."""
    lines = []
    sets = result["samples"]
    names = result.get("attributes", [])
    if sets:
        first = next(iter(sets.values()))
        if "sliced_wasserstein" in first:
            cols = ["fd", "precision", "recall", "sliced_wasserstein"]
        else:
            shown = names if len(names) <= 6 else ["mean_accuracy"]  # CelebA's 40 would not fit a table
            cols = ["fd", "precision", "recall", "fd_inception", "joint", *shown, "other_entropy",
                    "pairwise_distance"]
        lines += ["| set | " + " | ".join(c.replace("_", " ") for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for name, m in sets.items():
            acc = m.get("attribute_accuracy", {})
            div = m.get("diversity", {})
            entropies = [d["other_entropy"] for d in div.values() if not math.isnan(d["other_entropy"])]
            per_attribute = [acc[a] for a in names if a in acc]
            row = {**m, **{a: acc.get(a) for a in (*names, "joint")},
                   "mean_accuracy": sum(per_attribute) / len(per_attribute) if per_attribute else None,
                   "other_entropy": sum(entropies) / len(entropies) if entropies else None}
            lines.append(f"| {name} | " + " | ".join(fmt(row.get(c)) for c in cols) + " |")
    judged = (result.get("judge") or {}).get("test_accuracy", {})
    extra = {**{f"judge test accuracy ({a})": v for a, v in judged.items()}, **(result.get("reconstruction") or {}),
             **{k: v for k, v in (result.get("likelihood") or {}).items() if not isinstance(v, dict)}}
    if extra:
        lines += ["", "| quantity | value |", "|---|---|"] + [f"| {k} | {fmt(v, 4)} |" for k, v in extra.items()]
    return "\n".join(lines)


def evaluate_run(args: EvalOptions, device="cpu") -> dict:
    """Score a run (see evaluate.py's docstring for the sets and keys), write ``args.out`` (default
    <run>/eval.json), print the tables, and return the result dict."""
    baselines = check_options(args)
    progress = not args.no_progress and sys.stderr.isatty()
    run_dir = Path(args.run)
    stage, config, autoencoder, ldm = load_run(run_dir, args.checkpoint, device)
    if ldm is not None and args.guide is not None:
        ldm.use_guide(args.guide)  # another run on other latents: refused here, in one line
    s = sampler_settings(args, ldm)  # before any work: a bad flag is one line, not minutes later
    data_cfg = from_dict(DataConfig, config["data"])
    test_set = build_data(data_cfg, "test")
    schema = test_set.schema
    notes: list[str] = []
    n = min(args.num, len(test_set))
    if n < args.num:
        notes.append(f"the test split holds {len(test_set)} images: sets of {n}, not --num {args.num}")
    reference, ref_attrs = stacked(test_set, 0, n)
    if len(test_set) >= 2 * n:
        floor, floor_attrs, floor_source = *stacked(test_set, n, n), "test"
    else:
        floor, floor_attrs, floor_source = *stacked(build_data(data_cfg, "train"), 0, n), "train"
    is_image = reference.dim() == 4
    result = {"run": str(run_dir), "stage": stage, "dataset": data_cfg.name,
              "autoencoder": getattr(autoencoder, "kind", None), "attributes": list(schema.names),
              "settings": {"num": n, "seed": args.seed, "data_source": floor_source, "baselines": baselines},
              "judge": None, "reconstruction": None, "likelihood": None, "samples": {}, "notes": notes}

    judge = inception = None
    if is_image and schema.names:
        folder = Path(args.classifier_dir) if args.classifier_dir else run_dir.resolve().parent / "classifiers"
        settings = {"steps": args.classifier_steps} if args.classifier_steps else {}
        cached, _ = judge_path(config["data"], folder, **settings)
        if not cached.exists():  # trained now and saved there: a folder it cannot be saved in is said first
            check_output_path("--classifier-dir", cached, (".pt",))
        judge, record, path = load_or_train_classifier(config["data"], folder, device, progress, **settings)
        result["judge"] = {"path": str(path), "test_accuracy": record["test_accuracy"],
                           "test_size": record["test_size"], "feature_dim": judge.arch["feature_dim"]}
        print(f"judge {path}: test accuracy {record['test_accuracy']}", flush=True)
    elif is_image:
        notes.append(f"dataset {data_cfg.name!r} has no attributes: no judge, so no domain FD, accuracy or diversity")
    if is_image and not args.no_inception:
        try:
            inception = load_inception(device=device)
        except InceptionUnavailable as e:
            notes.append(f"fd_inception skipped: {e}")
    score = Scorer(reference, judge, schema, inception, args.batch_size)
    targets = floor_attrs if schema.names else None
    result["samples"]["data"] = score(floor, targets)
    for name, images in outside_sets(args.samples, reference.shape[1:], n).items():
        result["samples"][name] = score(images)

    if autoencoder is not None:
        recon = decode(autoencoder, encode(autoencoder, floor, False, None, args.batch_size), args.batch_size)
        result["reconstruction"] = reconstruction_metrics(floor, recon, notes)
        result["samples"]["reconstructions"] = score(recon, targets)

    if ldm is not None:
        result["settings"].update(s)

        def draw(attrs, seed, unasked="model"):
            g = torch.Generator(device=device).manual_seed(seed)
            return ldm.sample(n, attrs=attrs, generator=g, progress=progress, batch_size=args.batch_size,
                              unasked=unasked, **s).cpu()

        print(f"sampling {n} with {s['sampler']} ({s['steps'] or 'all'} steps)", flush=True)
        result["samples"]["ldm"] = score(draw(None, args.seed))
        if ldm.conditional and schema.names:
            result["samples"]["ldm_conditional"] = score(draw(ref_attrs, args.seed + 1), ref_attrs)
            if ldm.attribute_prior is not None:
                result["samples"]["ldm_drawn_attributes"] = score(draw(None, args.seed + 6, unasked="data"))

    gmm, gmm_space = None, None
    if autoencoder is not None or ldm is not None:
        vae = autoencoder is not None and not autoencoder.is_deterministic
        if "prior" in baselines and vae:
            g = torch.Generator().manual_seed(args.seed + 4)
            z = torch.randn(n, *autoencoder.latent_shape, generator=g)
            result["samples"]["prior"] = score(decode(autoencoder, z, args.batch_size))
        elif "prior" in baselines and args.baselines != "auto":
            notes.append("prior baseline skipped: N(0, I) is a VAE's prior, and this run has no VAE")
        if "gmm" in baselines:
            gmm, gmm_space = fit_gmm(args, autoencoder, ldm, data_cfg, vae)
            z = gmm.sample(n, seed=args.seed + 5)
            if gmm_space == "normalised":
                z = ldm.normaliser.denormalise(z)
            images = decode(autoencoder, z, args.batch_size) if autoencoder is not None else z
            result["samples"]["gmm"] = score(images)
            result["settings"]["gmm"] = {"components": args.gmm_components, "space": gmm_space,
                                         "fit_examples": gmm.fit_examples, "converged": gmm.converged}

    if ldm is not None or (autoencoder is not None and not autoencoder.is_deterministic):
        print("likelihood bounds", flush=True)
        result["likelihood"] = likelihood(args, autoencoder, ldm, test_set, gmm, gmm_space, device)

    out = output_path(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(finite(result), indent=1, allow_nan=False) + "\n")
    print(table(result))
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {out}")
    return result


def fit_gmm(args, autoencoder, ldm, data_cfg, vae: bool):
    """The GMM baseline, fitted on one latent per training image: z ~ q(z|x) for a VAE (what the diffusion
    was trained on), the code itself otherwise; in the diffusion's normalised space when there is one."""
    train_set = build_data(data_cfg, "train")
    x, _ = stacked(train_set, 0, args.gmm_fit_examples)
    g = torch.Generator(device=next(autoencoder.parameters()).device if autoencoder else "cpu")
    g.manual_seed(args.seed + 6)
    z = encode(autoencoder, x, vae, g, args.batch_size) if autoencoder is not None else x
    space = "raw"
    if ldm is not None:
        z, space = ldm.normaliser.normalise(z), "normalised"
    print(f"fitting a {args.gmm_components}-component GMM on {len(z)} {space} latents", flush=True)
    return GaussianMixturePrior(z, args.gmm_components, seed=args.seed), space
