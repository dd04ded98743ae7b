"""The trainings as library calls: what train_ae.py, train_diffusion.py, train_classifier.py and train_joint.py run.

    from latentdiff.config import LDMRunConfig, load_config
    from latentdiff.stages import train_latent_diffusion
    cfg = load_config(LDMRunConfig, "configs/shapes/ldm_kl.yaml", ["ae.run=runs/shapes_ae_kl"])
    trainer = train_latent_diffusion(cfg)          # the same run as the command line's

Each builds its task from a validated config and hands it to the one training loop
(``latentdiff.training.train``), which resumes, trains, checkpoints and returns the ``Trainer``.
``argv`` is the command line shown in the resume hint (default: this process's); ``overwrite`` starts over in
a run folder that holds another run (otherwise refused). A run stopped by SIGINT/SIGTERM returns with
``trainer.stop_signal`` set; the commands then exit with 128 + that number.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from autoencoders import AutoencoderObjective
from latentdiff.builders import build_autoencoder_from_config, build_data, build_denoiser, build_diffusion
from latentdiff.bundle import is_bundle
from latentdiff.checkpoints import CheckpointError, load_checkpoint
from latentdiff.conditioning import AttributePrior
from latentdiff.config import (
    AERunConfig,
    ClassifierRunConfig,
    ConditioningConfig,
    DataConfig,
    JointRunConfig,
    LDMRunConfig,
    SampleConfig,
    from_dict,
    to_dict,
)
from latentdiff.latent_classifier import ClassifierTask, NoisyAttributeClassifier
from latentdiff.latents import (
    autoencoder_identity,
    build_latent_cache,
    cache_key,
    file_hash,
    fit_normaliser,
    sample_latents,
)
from latentdiff.loading import (
    AE_COPY,
    autoencoder_checkpoint,
    autoencoder_copy_hash,
    autoencoder_of_run,
    check_autoencoder_copy,
    ldm_parts_from_bundle,
    ldm_parts_from_checkpoint,
    load_autoencoder,
    run_checkpoint,
)
from latentdiff.metrics.likelihood import autoencoder_decoder_variance
from latentdiff.pipeline import LatentDiffusion
from latentdiff.run_folder import preflight_run_dir
from latentdiff.runtime import distributed_init, is_main_process, pick_device, seed_everything
from latentdiff.tasks import AutoencoderTask, DiffusionTask, JointModel, JointTask, toy_render
from latentdiff.training import train
from latentdiff.viz import image_grid, reverse_process_grid, save_png


def _argv(argv):
    return argv if argv is not None else [Path(sys.argv[0]).name, *sys.argv[1:]]


def _begin(cfg, argv, resume: bool, overwrite: bool):
    """What both stages do first: join a torchrun group, seed, pick the device, check the run folder before any
    work (``preflight_run_dir``), build the two splits. Returns (argv for the resume hint, device, run folder,
    whether an earlier run continues, train set, test set)."""
    distributed_init()
    seed_everything(cfg.train.seed)
    device = pick_device(cfg.train.device)
    run_dir = Path(cfg.out_dir) / cfg.name
    resuming = preflight_run_dir(run_dir, to_dict(cfg), resume, overwrite)
    return _argv(argv), device, run_dir, resuming, build_data(cfg.data, "train"), build_data(cfg.data, "test")


# ----------------------------------------------------------------------------- stage one

def first_images(dataset, n: int) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(min(n, len(dataset)))])


def train_autoencoder(cfg: AERunConfig, resume: bool = False, argv: list[str] | None = None,
                      overwrite: bool = False):
    """Stage one: the autoencoder of ``cfg`` trained into ``<out_dir>/<name>`` (continued if it exists)."""
    argv, device, run_dir, _, train_set, test_set = _begin(cfg, argv, resume, overwrite)
    shape = tuple(train_set.sample_shape)
    if len(shape) != 3:
        raise ValueError(f"data.name: {cfg.data.name!r} yields {shape} points, not images; "
                         f"train a diffusion on it directly (train_diffusion.py with ae.run: null)")
    model = build_autoencoder_from_config(cfg.model, shape).to(device)
    objective = AutoencoderObjective(model, **vars(cfg.loss)).to(device)
    test_images = first_images(test_set, cfg.eval_samples)
    task = AutoencoderTask(model, objective, test_images, test_images[:32])
    data_root = getattr(train_set, "resolved_root", None)  # where MNIST-like files were actually read
    task.state = lambda: {"sample_shape": list(shape), "schema": train_set.schema.to_dict(),
                          **({"data_root": str(data_root)} if data_root else {})}
    n_params = sum(p.numel() for p in model.parameters())
    if is_main_process():
        print(f"{cfg.model.kind} autoencoder: {n_params / 1e6:.2f} M parameters, latents "
              f"{tuple(model.latent_shape)} for images {shape}; run folder {run_dir}", flush=True)
    return train(task, train_set, cfg.train, run_dir, to_dict(cfg), device, resume,
                 num_workers=cfg.data.num_workers, argv=argv, overwrite=overwrite)


# ----------------------------------------------------------------------------- stage two

def encode_split(cfg, autoencoder, ae_record, dataset, split, device):
    """The latent cache of one split, reused when it exists; under torchrun every rank encodes a shard.
    ``ae_record``: the autoencoder's {"hash", "use_ema", ...} (the cache is keyed on both)."""
    ae_hash = autoencoder_identity(ae_record)
    root = Path(cfg.latents.cache_dir or Path(cfg.out_dir) / "latent_cache")
    folder = root / cache_key(ae_hash, to_dict(cfg.data), split)
    meta = {"ae_hash": ae_hash, "split": split, "data": to_dict(cfg.data)}
    if is_main_process() and (folder / "meta.json").exists():
        print(f"latent cache hit: {folder}", flush=True)
    return build_latent_cache(autoencoder, dataset, folder, cfg.latents.encode_batch_size, device,
                              progress=sys.stderr.isatty(), meta=meta)


def frozen_autoencoder(cfg, run_dir: Path, resuming: bool, overwrite: bool, device):
    """The stage one of a diffusion run and its record for the checkpoints (path, file hash, copy hash), checked
    against the run folder's own copy before any latent is encoded.

    It is ``ae.run``'s checkpoint; when a run is resumed and ``ae.run`` holds none (the stage-one run was moved or
    deleted, or the run folder was copied elsewhere), it is the run's own copy, checked against the hash its
    last.pt records: the weights it was trained on, so the latent cache's key is the same too.
    """
    try:
        ae_path = autoencoder_checkpoint(cfg.ae.run, cfg.ae.checkpoint)
    except CheckpointError:
        last = run_dir / "checkpoints" / "last.pt"
        saved = load_checkpoint(last).get("task", {}).get("ae") if resuming and not overwrite else None
        if not (saved and saved.get("copy")):
            raise
        autoencoder = autoencoder_of_run(saved, run_dir, device)
        if is_main_process():
            print(f"note: ae.run {cfg.ae.run} holds no autoencoder checkpoint; resuming on this run's own copy "
                  f"{run_dir / saved['copy']} (hash-checked: the weights it was trained on)", file=sys.stderr,
                  flush=True)
        return autoencoder, {k: saved[k] for k in ("path", "hash", "use_ema", "copy", "copy_hash")}
    autoencoder = load_autoencoder(ae_path, cfg.ae.use_ema, device)
    copy_hash = autoencoder_copy_hash(autoencoder) if overwrite else check_autoencoder_copy(autoencoder, run_dir)
    return autoencoder, {"path": str(ae_path.resolve()), "hash": file_hash(ae_path), "use_ema": cfg.ae.use_ema,
                         "copy": AE_COPY, "copy_hash": copy_hash}


def image_render(cfg, diffusion, normaliser, autoencoder, latent_shape, schema, conditional, run_dir, prior=None):
    """Decoded EMA samples from fixed noise; for attribute runs one row per value of the first attribute, the
    others drawn from the data once (``prior``, an ``AttributePrior``: sample.unasked=data) or left free."""
    n = min(cfg.sample.num, 64)
    cond = uncond = None
    nrow = None
    if conditional and schema is not None and schema.names:
        values = schema.num_values(0)
        per_row = max(1, n // values)
        n = per_row * values
        cond = torch.full((n, len(schema.names)), -1, dtype=torch.long)
        cond[:, 0] = torch.arange(values).repeat_interleave(per_row)
        if prior is not None:
            cond = prior.complete(cond, torch.Generator().manual_seed(cfg.sample.seed))
        uncond = torch.full_like(cond, -1)
        nrow = per_row
    noise = torch.randn(n, *latent_shape, generator=torch.Generator().manual_seed(cfg.sample.seed))

    def render(model, step, decoder=None):
        """``decoder``: the autoencoder to decode with (joint training passes its current EMA one)."""
        def decode(z):
            return (decoder or autoencoder).decode(normaliser.denormalise(z)).clamp(-1, 1)

        device = next(model.parameters()).device
        c = cond.to(device) if cond is not None else None
        u = uncond.to(device) if uncond is not None else None
        scale = cfg.sample.guidance_scale if c is not None else 1.0
        every = max(1, (cfg.sample.steps or diffusion.num_timesteps) // 8)  # ~8 snapshots of the reverse process
        z, trajectory = diffusion.sample(model, noise.shape, sampler=cfg.sample.sampler, steps=cfg.sample.steps,
                                         eta=cfg.sample.eta, cond=c, uncond=u, guidance_scale=scale,
                                         guidance_interval=cfg.sample.guidance_interval,
                                         noise=noise.to(device), return_trajectory=True, trajectory_every=every)
        images = decode(z)
        grid = image_grid(images, nrow=nrow)
        save_png(grid, run_dir / "samples" / f"step_{step:07d}.png")
        save_png(grid, run_dir / "samples" / "latest.png")
        first_two = {k: v[:, :2] if v.dim() > 1 else v for k, v in trajectory.items()}
        return {"samples/ema_fixed_noise": grid, "samples/reverse_process": reverse_process_grid(first_two, decode)}

    return render


def train_latent_diffusion(cfg: LDMRunConfig, resume: bool = False, argv: list[str] | None = None,
                           overwrite: bool = False):
    """Stage two: a DDPM on the latent codes of ``cfg.ae.run`` (or on the data when it is null)."""
    argv, device, run_dir, resuming, train_set, test_set = _begin(cfg, argv, resume, overwrite)
    schema = train_set.schema
    extra_state = {"schema": schema.to_dict()}
    if getattr(train_set, "resolved_root", None):  # where MNIST-like files were actually read
        extra_state["data_root"] = str(train_set.resolved_root)
    if cfg.ae.run is not None:
        autoencoder, ae_record = frozen_autoencoder(cfg, run_dir, resuming, overwrite, device)
        expected = autoencoder.sample_shape
        if tuple(train_set.sample_shape) != expected:
            raise ValueError(f"data: the autoencoder in {cfg.ae.run} was trained on images {expected}, "
                             f"this data config gives {tuple(train_set.sample_shape)}")
        train_cache = encode_split(cfg, autoencoder, ae_record, train_set, "train", device)
        test_cache = encode_split(cfg, autoencoder, ae_record, test_set, "test", device)
        normaliser = fit_normaliser(train_cache.mean, train_cache.logvar, cfg.latents.normalisation)
        k = min(cfg.bound_examples, len(test_cache))
        g = torch.Generator().manual_seed(0)
        held_mean = torch.from_numpy(test_cache.mean[:k].copy())
        held_logvar = (torch.from_numpy(test_cache.logvar[:k].copy()) if test_cache.stochastic
                       else torch.empty(0))
        heldout = normaliser.normalise(sample_latents(held_mean, held_logvar, generator=g))
        latent_shape, train_data, from_cache = train_cache.latent_shape, train_cache, True
        # The run carries the exact stage one it trains on, so it samples without ae.run (moved, deleted);
        # the task writes the copy once the folder is checked.
        extra_state["ae"] = {**ae_record, "stochastic": train_cache.stochastic}
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
    if conditional:  # the data's attribute combinations: sampling can draw what was not asked for from them
        labels = (torch.from_numpy(np.asarray(train_cache.attrs)) if from_cache
                  else torch.stack([train_set[i][1] for i in range(len(train_set))]))
        prior = AttributePrior.from_labels(labels.view(len(labels), -1))
        extra_state["attribute_prior"] = prior.state()
    diffusion = build_diffusion(cfg.diffusion)
    denoiser = build_denoiser(cfg.denoiser, latent_shape, num_values).to(device)
    if autoencoder is not None:
        render = image_render(cfg, diffusion, normaliser, autoencoder, latent_shape, schema, conditional,
                              run_dir, prior if conditional and cfg.sample.unasked == "data" else None)
    else:
        render = toy_render(diffusion, points, normaliser, out_png=run_dir / "samples" / "latest.png")
    task = DiffusionTask(diffusion, denoiser, normaliser, heldout, from_cache, conditional,
                         cfg.conditioning.drop_attribute_prob, cfg.conditioning.drop_all_prob, render=render,
                         bound_every=cfg.bound_every, extra_state=extra_state, autoencoder=autoencoder)
    n_params = sum(p.numel() for p in denoiser.parameters())
    if is_main_process():
        print(f"denoiser: {n_params / 1e6:.2f} M parameters on latents {tuple(latent_shape)}"
              f"{' (attribute-conditional)' if conditional else ''}; run folder {run_dir}", flush=True)
    return train(task, train_data, cfg.train, run_dir, to_dict(cfg), device, resume,
                 num_workers=cfg.data.num_workers, argv=argv, overwrite=overwrite)


# ----------------------------------------------------------------------------- joint training

START_SECTIONS = ("data", "latents", "diffusion", "denoiser", "conditioning", "sample")  # taken from the start run


def joint_start(cfg: JointRunConfig, run_dir: Path, resuming: bool, device) -> dict:
    """The ``LatentDiffusion`` parts (their ``config`` holds the sections a joint run takes) of what a joint run
    starts from: ``start.run``'s checkpoint or exported folder, or, when a run is resumed and that run is gone
    (moved, deleted), the joint run's own last.pt (every section and the architecture are in it; its weights
    replace the start's on resume anyway)."""
    start = Path(cfg.start.run)
    own = run_dir / "checkpoints" / "last.pt"
    if not start.is_dir() and resuming and own.exists():
        print(f"note: start.run {start} is gone; resuming on this run's own checkpoint", file=sys.stderr, flush=True)
        state, where = load_checkpoint(own), run_dir
    elif not start.is_dir():
        raise FileNotFoundError(f"start.run: {start} does not exist; train the two stages first (train_ae.py, then "
                                f"train_diffusion.py on a VAE) and give that run")
    elif is_bundle(start):  # an exported model someone handed on: its weights are the EMA ones
        return _joint_parts_checked(ldm_parts_from_bundle(start, device), start)
    else:
        state, where = load_checkpoint(run_checkpoint(start, cfg.start.checkpoint)), start
    if "latent_shape" not in state.get("task", {}):
        raise ValueError(f"start.run: {start} is not a train_diffusion.py run; joint training starts from a "
                         f"trained stage two")
    return _joint_parts_checked(ldm_parts_from_checkpoint(state, where, cfg.start.use_ema, device), start)


def _joint_parts_checked(parts: dict, start: Path) -> dict:
    """``parts`` when they hold a VAE to train; one line otherwise."""
    ae = parts["autoencoder"]
    if ae is None:
        raise ValueError(f"start.run: {start} was trained directly on data (ae.run: null); there is no "
                         f"autoencoder to train with its prior")
    if ae.is_deterministic:
        raise ValueError(f"start.run: {start} trains on a deterministic autoencoder ({ae.kind}): it has no "
                         f"posterior entropy H[q(z|x)], hence no bound to train end to end; start from a VAE run")
    return parts


def train_joint(cfg: JointRunConfig, resume: bool = False, argv: list[str] | None = None, overwrite: bool = False):
    """The third stage: a trained two-stage VAE run fine-tuned end to end on its two-stage bound (LSGM), into
    ``<out_dir>/<name>``. The run's config is the start run's sections (``START_SECTIONS``) plus this one's, so it
    samples, evaluates and exports like a stage-two run."""
    distributed_init()
    seed_everything(cfg.train.seed)
    device = pick_device(cfg.train.device)
    run_dir = Path(cfg.out_dir) / cfg.name
    resuming = (run_dir / "checkpoints" / "last.pt").exists() and not overwrite
    parts = joint_start(cfg, run_dir, resuming, device)
    sections = {k: parts["config"][k] for k in START_SECTIONS if k in parts["config"]}
    if sections.get("sample", {}).get("autoguidance_scale", 1.0) != 1.0:  # a joint run keeps no guide
        print(f"note: start.run samples with sample.autoguidance_scale={sections['sample']['autoguidance_scale']}; "
              f"a joint run has no guide (its latents move), so it samples with 1", file=sys.stderr, flush=True)
        sections["sample"] = {**sections["sample"], "autoguidance_scale": 1.0}
    freeze_at = cfg.joint.autoencoder_steps
    if freeze_at is not None and freeze_at >= cfg.train.steps and is_main_process():
        print(f"note: joint.autoencoder_steps={freeze_at} is not below train.steps={cfg.train.steps}: the autoencoder "
              f"trains to the end of this run (it freezes at step {freeze_at} if the run is trained longer)",
              file=sys.stderr, flush=True)
    config_dict = {**sections, **to_dict(cfg)}
    preflight_run_dir(run_dir, config_dict, resume, overwrite)
    data_cfg = from_dict(DataConfig, sections["data"], prefix="data.")
    train_set, test_set = build_data(data_cfg, "train"), build_data(data_cfg, "test")
    ae, denoiser, diffusion, normaliser = parts["autoencoder"], parts["denoiser"], parts["diffusion"], \
        parts["normaliser"]
    if tuple(train_set.sample_shape) != ae.sample_shape:
        raise ValueError(f"data: the start run's autoencoder takes images {ae.sample_shape}, its data section gives "
                         f"{tuple(train_set.sample_shape)}")
    k = min(cfg.joint.eval_examples, len(test_set) // 2)
    heldout, fit_images = first_images(test_set, 2 * k).split(k)
    # the decoder variance of the bound, fitted as evaluate.py does: its starting value
    variance = autoencoder_decoder_variance(ae, fit_images.to(device), torch.Generator(device=device).manual_seed(0))
    start = LatentDiffusion(**parts)
    model = JointModel(ae.requires_grad_(True), denoiser.requires_grad_(True), variance).to(device)
    conditioning = from_dict(ConditioningConfig, sections.get("conditioning"), prefix="conditioning.")
    sample_cfg = from_dict(SampleConfig, sections.get("sample"), prefix="sample.")
    schema, prior = start.schema, start.attribute_prior
    render = image_render(SimpleNamespace(sample=sample_cfg), diffusion, normaliser, ae, start.latent_shape, schema,
                          start.conditional, run_dir, prior if sample_cfg.unasked == "data" else None)
    extra_state = {"schema": schema.to_dict() if schema is not None else None,
                   "latent_shape": list(start.latent_shape), "num_values": start.num_values,
                   "joint": {"start": str(Path(cfg.start.run).resolve()), "autoencoder": ae.config}}
    if prior is not None:
        extra_state["attribute_prior"] = prior.state()
    task = JointTask(model, diffusion, normaliser, heldout, fit_images, start.conditional,
                     conditioning.drop_attribute_prob, conditioning.drop_all_prob, cfg.joint.denoiser_objective,
                     cfg.joint.importance_sampling, cfg.joint.bound_timesteps, cfg.joint.autoencoder_steps, render,
                     extra_state)
    if is_main_process():
        n_ae, n_den = (sum(p.numel() for p in m.parameters()) for m in (ae, denoiser))
        print(f"joint training: autoencoder {n_ae / 1e6:.2f} M + denoiser {n_den / 1e6:.2f} M parameters from "
              f"{cfg.start.run}, decoder variance {variance:.3g} to start; run folder {run_dir}", flush=True)
    return train(task, train_set, cfg.train, run_dir, config_dict, device, resume,
                 num_workers=data_cfg.num_workers, argv=_argv(argv), overwrite=overwrite)


# ----------------------------------------------------------------------------- post-hoc classifier

def classifier_data(run: Path, state: dict, ldm, eval_examples: int):
    """(train set, held-out (normalised latents, attrs), from_cache) of the diffusion run in ``run``."""
    # ae.run is not needed (the autoencoder is the run's own copy) and may no longer exist: not validated
    run_cfg = from_dict(LDMRunConfig, {**state["config"], "ae": {**state["config"].get("ae", {}), "run": None}})
    if run_cfg.latents.cache_dir is None:  # the run's out_dir is <run>/.., wherever this is started from
        run_cfg.latents.cache_dir = str(run.resolve().parent / "latent_cache")
    train_set, test_set = build_data(run_cfg.data, "train"), build_data(run_cfg.data, "test")
    ae = state["task"].get("ae")
    g = torch.Generator().manual_seed(0)
    if ae:
        caches = [encode_split(run_cfg, ldm.autoencoder, ae, data, split, ldm.device)
                  for data, split in ((train_set, "train"), (test_set, "test"))]
        k = min(eval_examples, len(caches[1]))
        mean, logvar, attrs = (torch.stack(column) for column in zip(*(caches[1][i] for i in range(k))))
        z = sample_latents(mean, logvar, generator=g)
        return caches[0], (ldm.normaliser.normalise(z), attrs), True
    k = min(eval_examples, len(test_set))
    points, attrs = (torch.stack(column) for column in zip(*(test_set[i] for i in range(k))))
    return train_set, (ldm.normaliser.normalise(points), attrs), False


def train_latent_classifier(cfg: ClassifierRunConfig, run: str | Path, resume: bool = False,
                            argv: list[str] | None = None, overwrite: bool = False):
    """A noise-conditional attribute classifier on the latents of the diffusion run in ``run``."""
    argv = _argv(argv)
    run = Path(run)
    if not (run / "checkpoints" / "last.pt").exists():
        raise FileNotFoundError(f"--run {run}: no diffusion checkpoint ({run / 'checkpoints' / 'last.pt'} "
                                f"is missing); train one with train_diffusion.py first")
    preflight_run_dir(run / cfg.name, to_dict(cfg), resume, overwrite)  # before its latent cache is encoded
    seed_everything(cfg.train.seed)
    device = pick_device(cfg.train.device)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    ldm = LatentDiffusion(**ldm_parts_from_checkpoint(state, run, device=device))
    if ldm.schema is None or not ldm.schema.names:
        raise ValueError(f"--run {run}: its dataset has no attributes to classify")
    schema = ldm.schema
    num_values = [schema.num_values(i) for i in range(len(schema.names))]
    train_set, heldout, from_cache = classifier_data(run, state, ldm, cfg.eval_examples)
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
    return train(task, train_set, cfg.train, run / cfg.name, to_dict(cfg), device, resume, argv=argv,
                 overwrite=overwrite)
