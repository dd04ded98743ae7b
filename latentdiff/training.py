"""The one training loop both stages use.

A *task* says what to train; this module says how. A task provides

    task.model                       nn.Module: trained, EMA-tracked, saved as "model"
    task.extra_modules -> dict       other trained modules (e.g. a discriminator), saved by name
    task.losses(batch, step)         -> ({group: scalar or None}, {name: float}) for one micro-batch;
                                        backward of the sum must give each module only its own gradient
    task.evaluate(model, step)       -> {metric: float} on held-out data (optional)
    task.log_images(writer, model, step)   image grids for TensorBoard (optional)
    task.best_metric                 (name, "min" | "max") for best.pt (optional)
    task.state() / task.load_state(d)      extra plain state stored in checkpoints (optional)

and the loop does the rest: AdamW, warm-up then constant or cosine learning rate, gradient
accumulation and clipping, EMA of the weights, optional autocast and ``torch.compile``, a seeded
and resumable data order, atomic checkpoints that resume bit-exactly on the CPU, TensorBoard
scalars, a progress bar, SIGINT/SIGTERM handling and NaN detection.

Under ``torchrun`` every rank holds the whole model (same seed, same initial weights), reads its own
share of each global batch, and gradients are averaged across ranks, so N ranks with batch B step
exactly like one process with batch N*B. Ranks draw their noise from independent streams. Decisions
that must be unanimous (stop on a signal or the time budget, NaN, resume step) are all-reduced; only
rank 0 evaluates, logs and writes checkpoints. ``out_dir`` and the latent cache must be on a
filesystem every rank sees.
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from latentdiff.checkpoints import (
    CHECKPOINT_FORMAT,
    HEALTHY,
    CheckpointError,
    free_space,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
)
from latentdiff.config import TrainConfig
from latentdiff.data_order import BatchStream, to_device
from latentdiff.optim import EMA, lr_at
from latentdiff.run_folder import check_run_dir, clear_run_outputs, flatten_config, lock_run_dir, write_run_config
from latentdiff.runtime import TrainingError, any_rank, flush_denormals, is_main_process, rank_and_world, rank_seed

# ----------------------------------------------------------------------------- health



# A loss over FAR_ABOVE times its band's upper edge is a divergence that stayed finite (no NaN stop): a warning, or
# the stop of train.stop_on_divergence. For a positive loss the edge is at least 3 times its average, so this is a
# loss over 300 times its average, where healthy spikes (a hard batch, a loss term joining) are a few times it.
# Measured on the tests' tiny runs: healthy losses never passed 0.4 times the edge (swissroll 400 steps, shapes
# autoencoder and diffusion 150 steps each), while train.lr=300 jumped to 2800 times it (swissroll, under its warm-up)
# and 8e10 times it (conftest's ToyTask): 100 sits between, over two orders of margin on the healthy side.
FAR_ABOVE = 100


class RunningBand:
    """Whether a value (loss, gradient norm) stays in its running band: a few float operations per step.

    Out of band: not finite, or above ``m + 2|m| + 8d``, where ``m`` is an exponential moving average of
    the values and ``d`` one of their absolute deviations from it (both with weight 0.01). Values are
    clipped to the band before they are averaged in, so a blow-up does not widen the band at once, while
    a lasting change of level (a loss term joining later) is followed within some tens of steps.
    """

    def __init__(self, rate: float = 0.01):
        self.rate, self.mean, self.dev, self.n = rate, 0.0, 0.0, 0

    def limit(self) -> float:
        return self.mean + 2.0 * abs(self.mean) + 8.0 * self.dev if self.n else math.inf

    def update(self, value: float) -> bool:
        """Take one value; True when it was inside the band."""
        if not math.isfinite(value):
            return False
        limit = self.limit()
        inside = value <= limit
        value = min(value, limit)
        if self.n == 0:
            self.mean = value
        else:
            self.dev += self.rate * (abs(value - self.mean) - self.dev)
            self.mean += self.rate * (value - self.mean)
        self.n += 1
        return inside

    def far_above(self, value: float, factor: float = FAR_ABOVE) -> bool:
        """Whether ``value`` is over ``factor`` times the band's upper edge (never negative: m + 2|m| ≥ |m|).
        Call before ``update``; see ``FAR_ABOVE``."""
        limit = self.limit()
        return math.isfinite(value) and 0 < limit < math.inf and value > factor * limit

    def state(self) -> dict:
        return {"mean": self.mean, "dev": self.dev, "n": self.n}

    def load_state(self, d: dict) -> None:
        self.mean, self.dev, self.n = float(d["mean"]), float(d["dev"]), int(d["n"])




# ----------------------------------------------------------------------------- the loop



class Trainer:
    """Run ``task`` for ``cfg.steps`` optimiser steps, writing into ``run_dir``.

    Args:
        task: see the module docstring.
        train_set: a map-style dataset whose items the task's ``losses`` understands.
        cfg: the ``train`` section of the run config.
        run_dir: ``runs/<name>``; checkpoints go to ``run_dir/checkpoints``, TensorBoard to ``run_dir/tb``.
        config_dict: the whole resolved run config, stored in every checkpoint.
        device: where the task's modules already are.
    """

    def __init__(self, task, train_set, cfg: TrainConfig, run_dir, config_dict: dict, device,
                 num_workers: int = 0):
        self.task, self.cfg, self.device = task, cfg, torch.device(device)
        flush_denormals()
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.config_dict = config_dict
        self.rank, self.world = rank_and_world()
        self.main = self.rank == 0
        self.step = 0
        self.saved_step = None  # the step of the newest last.pt this process wrote or resumed from
        self.best = None
        self.stop_reason = None
        self.stop_signal = None  # the signal number when SIGINT/SIGTERM stopped the run (exit 128 + it)
        # Health (see RunningBand): a last.pt is promoted to healthy.pt once the first step after it saw the
        # loss and gradient norms inside their bands, and every step since the previous save did too.
        self.bands: dict[str, RunningBand] = {}
        self.interval_in_band = True  # no step since the last save left its band
        self.candidate_step = None  # the step of a last.pt waiting for that confirmation
        self.healthy_step = None  # the step of checkpoints/healthy.pt when this process knows it
        self.left_band_at = None  # the first step whose loss or gradient norm left its band, if any
        self.far_above_at = None  # the first step whose loss jumped far above its band (RunningBand.far_above)
        self.last_metrics: dict = {}  # the latest evaluation, e.g. for benchmarks
        # Autoguidance (Karras et al. 2024): at guide_step the EMA weights are kept as the run's guide, a weaker
        # version of the final model with its own (shorter) averaging, carried by every later checkpoint.
        self.guide_step = max(1, round(cfg.guide_at * cfg.steps)) if cfg.guide_at is not None else None
        self.guide_state: dict | None = None
        self.train_seconds = 0.0  # wall time inside fit(), this process

        self.modules = {"model": task.model, **getattr(task, "extra_modules", {})}
        if self.world > 1:  # as DistributedDataParallel does: every rank starts from rank 0's weights
            with torch.no_grad():
                for module in self.modules.values():
                    for t in [*module.parameters(), *module.buffers()]:
                        dist.broadcast(t.data, src=0)
        groups = []
        for name, module in self.modules.items():
            params = [p for p in module.parameters() if p.requires_grad]
            if params:
                groups.append({"params": params, "name": name})
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.adam_betas),
                                           weight_decay=cfg.weight_decay)
        self.ema = (EMA(task.model, cfg.ema_decay, cfg.ema_warmup, sigma_rel=cfg.ema_sigma_rel)
                    if cfg.ema_decay is not None else None)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        if cfg.compile:
            task.model.compile()
        self.stream = BatchStream(train_set, cfg.batch_size, cfg.seed, num_workers, self.rank, self.world)
        self.writer = None
        if self.world > 1:  # the modules are built and identical on every rank; from here on ranks draw apart
            torch.manual_seed(rank_seed(cfg.seed, self.rank))

    # -- state ---------------------------------------------------------------------------------
    @property
    def eval_model(self) -> nn.Module:
        """The weights used for evaluation and samples: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else self.task.model

    def _rng_state(self) -> dict:
        return {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def _set_rng_state(self, rng: dict) -> None:
        torch.set_rng_state(rng["torch"])
        if torch.cuda.is_available() and rng["cuda"]:
            torch.cuda.set_rng_state_all(rng["cuda"])

    def state_dict(self, rng_per_rank: list | None = None) -> dict:
        """Everything to resume; ``rng_per_rank`` (from every rank, see ``save``) makes torchrun resumes exact."""
        state = {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "model": self.task.model.state_dict(),
            "extra_modules": {k: m.state_dict() for k, m in self.modules.items() if k != "model"},
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": self._rng_state(),
            "rng_per_rank": rng_per_rank,
            "best": self.best,
            "config": self.config_dict,
            "task": self.task.state() if hasattr(self.task, "state") else {},
            "health": {k: b.state() for k, b in self.bands.items()},
            "guide": self.guide_state,  # None until guide_step (or without train.guide_at)
            "guide_step": self.guide_step if self.guide_state is not None else None,
        }
        return state

    def load_state_dict(self, state: dict) -> None:
        try:
            self.task.model.load_state_dict(state["model"])
            for k, sd in state.get("extra_modules", {}).items():
                self.modules[k].load_state_dict(sd)
            if self.ema is not None and state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, ValueError) as e:
            first = str(e).strip().splitlines()[0][:160]
            raise CheckpointError(f"checkpoint does not fit this run's model ({first}); "
                                  f"use a new run name or the config it was trained with") from None
        self.scaler.load_state_dict(state["scaler"])
        per_rank = state.get("rng_per_rank")
        if self.world == 1:
            self._set_rng_state(state["rng"])
        elif per_rank is not None and len(per_rank) == self.world:
            self._set_rng_state(per_rank[self.rank])
        else:  # another number of processes than the run was saved with: fresh, still independent streams
            torch.manual_seed(rank_seed(self.cfg.seed + int(state["step"]), self.rank))
        self.step = int(state["step"])
        self.best = state.get("best")
        self.guide_state = state.get("guide")
        if self.guide_state is not None and state.get("guide_step") != self.guide_step:
            kept = state.get("guide_step")
            raise CheckpointError(f"this run kept its guide at step {kept}, the config asks for step "
                                  f"{self.guide_step} (train.guide_at × train.steps); resume with the values it was "
                                  f"trained with, or to train on with the guide it has set "
                                  f"train.guide_at={kept / self.cfg.steps:.10g}")
        if self.guide_state is None and self.guide_step is not None and self.guide_step <= self.step:
            raise CheckpointError(f"train.guide_at × train.steps puts the guide at step {self.guide_step}, but this "
                                  f"run is at step {self.step} and kept none (it had no guide_at then, or a later "
                                  f"step); give a guide_at past step {self.step} of {self.cfg.steps}, or none")
        for k, d in state.get("health", {}).items():
            self.bands.setdefault(k, RunningBand()).load_state(d)
        if hasattr(self.task, "load_state"):
            self.task.load_state(state.get("task", {}))
        self.stream.seek(self.step * self.cfg.grad_accum)

    def save(self, name: str = "last.pt") -> None:
        """Rank 0 writes ``checkpoints/<name>``. Under torchrun ``last.pt`` is collective: every rank must
        call it at the same step, since it gathers every rank's random state for an exact resume."""
        rng_per_rank = None
        if self.world > 1 and name == "last.pt":
            rng_per_rank = [None] * self.world
            dist.all_gather_object(rng_per_rank, self._rng_state())
        if self.main:
            save_checkpoint(self.state_dict(rng_per_rank), self.ckpt_dir / name)
        if name == "last.pt":
            self.saved_step = self.step
            self.candidate_step = self.step if self.interval_in_band else None
            self.interval_in_band = True

    def try_resume(self) -> bool:
        """Continue from ``checkpoints/last.pt`` when it exists. Returns whether it did."""
        path = self.ckpt_dir / "last.pt"
        if not path.exists():
            return False
        try:
            state = load_checkpoint(path, map_location=self.device)
        except CheckpointError as e:  # the generic advice ("delete it") would make the folder look new
            # healthy.pt is a hard link: when it is last.pt's own inode it holds the same damaged bytes
            kept = [p.name for p in (self.ckpt_dir / HEALTHY, self.ckpt_dir / "best.pt")
                    if p.exists() and not os.path.samefile(p, path)]
            way = (f"to continue from {kept[0]} instead: cp {self.ckpt_dir / kept[0]} {path} and rerun "
                   f"(best.pt is kept); " if kept else "")
            raise CheckpointError(f"{str(e).split('; delete it')[0]}; {way}to start over: --overwrite, or "
                                  f"pick another name=...") from None
        self.load_state_dict(state)
        self.saved_step = self.step
        self.candidate_step = self.step  # the first step after the resume confirms it
        return True

    # -- health ----------------------------------------------------------------------------------
    def _check_health(self, values: dict[str, float]) -> None:
        """Feed the step's loss and gradient norms to their bands; promote a confirmed last.pt. A loss far above its
        band (divergence that stays finite) is a warning once, or the stop of ``train.stop_on_divergence``."""
        loss_band = self.bands.get("loss")
        jump = None
        if self.far_above_at is None and loss_band is not None and loss_band.far_above(values["loss"]):
            self.far_above_at = self.step
            jump = (f"loss jumped to {values['loss']:.4g} at step {self.step}, over {FAR_ABOVE} times its running "
                    f"band's upper edge ({loss_band.limit():.4g})")
        inside = True
        for name, value in values.items():
            band = self.bands.get(name)
            if band is None:
                band = self.bands[name] = RunningBand()
            inside = band.update(value) and inside
        if not inside:
            self.interval_in_band = False
            if self.left_band_at is None:
                self.left_band_at = self.step
        if self.candidate_step is not None:
            if inside and self.candidate_step == self.step:
                self._promote_to_healthy()
            self.candidate_step = None
        if jump and self.cfg.stop_on_divergence:  # no step is taken, as after a NaN
            raise TrainingError(f"{jump}; train.stop_on_divergence: {self._diverged()}")
        if jump and self.main:
            print(f"warning: {jump}: training has likely diverged; {self._healthy_note()}; set "
                  f"train.stop_on_divergence=true to stop at such a jump", file=sys.stderr, flush=True)

    def _promote_to_healthy(self) -> None:
        """healthy.pt := last.pt, as a hard link (no copy, no write); a copy where links are not possible."""
        if self.main:
            last, healthy = self.ckpt_dir / "last.pt", self.ckpt_dir / HEALTHY
            tmp = healthy.with_name(f".{HEALTHY}.tmp{os.getpid()}")
            try:
                tmp.unlink(missing_ok=True)
                try:
                    os.link(last, tmp)
                except OSError:
                    shutil.copyfile(last, tmp)
                os.replace(tmp, healthy)
            except OSError as e:
                tmp.unlink(missing_ok=True)
                print(f"warning: could not keep {healthy} ({e.strerror or e}; {free_space(healthy.parent)})",
                      file=sys.stderr, flush=True)
                return
        self.healthy_step = self.step

    def _healthy_checkpoint_step(self) -> int | None:
        """The step of checkpoints/healthy.pt (rank 0), None when there is none or it does not read."""
        healthy = self.ckpt_dir / HEALTHY
        if not (self.main and healthy.exists()):
            return None
        if self.healthy_step is not None:
            return self.healthy_step
        try:  # written by an earlier process
            return int(torch.load(healthy, map_location="cpu", weights_only=True, mmap=True)["step"])
        except Exception:
            return None

    def _healthy_note(self) -> str:
        """Where a diverging run's last healthy weights are, for a warning (nothing is moved)."""
        step = self._healthy_checkpoint_step()
        if step is None:
            return "no healthy checkpoint was confirmed yet"
        return (f"the last healthy checkpoint is {self.ckpt_dir / HEALTHY} (step {step}): to continue from it, cp it "
                f"to {self.ckpt_dir / 'last.pt'} and rerun with a lower train.lr")

    def _diverged(self) -> str:
        """After a non-finite loss or gradient, or a loss far above its band with train.stop_on_divergence: put the
        last healthy checkpoint back as last.pt; say what is kept."""
        last, healthy = self.ckpt_dir / "last.pt", self.ckpt_dir / HEALTHY
        left = (f"; the loss or gradient norm left its running band at step {self.left_band_at}"
                if self.left_band_at is not None else "")
        if self.main and healthy.exists():
            step = self._healthy_checkpoint_step()
            if step is not None and step != self.saved_step:
                tmp = last.with_name(f".last.pt.tmp{os.getpid()}")
                try:
                    tmp.unlink(missing_ok=True)
                    try:
                        os.link(healthy, tmp)
                    except OSError:  # no hard links here: a copy, renamed into place all the same
                        shutil.copyfile(healthy, tmp)
                    os.replace(tmp, last)
                except OSError as e:
                    tmp.unlink(missing_ok=True)
                    return (f"the last healthy checkpoint (step {step}{left}) is {healthy}, but it could not be put "
                            f"back as last.pt ({e.strerror or e}): cp {healthy} {last}, then rerun with a lower "
                            f"train.lr")
            if step is not None:
                return (f"last.pt now holds the last healthy checkpoint (step {step}{left}), "
                        f"kept also as {healthy}; rerun with a lower train.lr to continue from it")
        if self.saved_step is None:
            return "no checkpoint was written yet"
        return (f"no healthy checkpoint was confirmed yet{left}; {last} (step {self.saved_step}) is kept as it was; "
                f"rerun with a lower train.lr to continue from it, or --overwrite to start over")

    # -- one optimiser step ----------------------------------------------------------------------
    def _autocast(self):
        if self.cfg.amp == "off":
            return nullcontext()
        dtype = torch.bfloat16 if self.cfg.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _average_gradients(self, loss: torch.Tensor) -> torch.Tensor:
        """Under torchrun, all-reduce the gradients and ``loss`` (mean over ranks) in one flat buffer.

        The loss rides along so that a NaN on any rank is seen by every rank in the same step, and all
        stop together instead of some waiting forever in the next all-reduce. Returns the mean loss.
        """
        if self.world == 1:
            return loss
        grads = [p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        dtype = grads[0].dtype if grads else loss.dtype
        flat = torch.cat([g.reshape(-1) for g in grads] + [loss.reshape(1).to(dtype)])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
        return flat[-1]

    def train_step(self) -> dict:
        cfg = self.cfg
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, cfg)
        self.optimizer.zero_grad(set_to_none=True)
        logs_sum: dict[str, float] = {}
        loss_sum = torch.zeros((), device=self.device)
        for _ in range(cfg.grad_accum):
            batch = to_device(next(self.stream), self.device)
            with self._autocast():
                losses, logs = self.task.losses(batch, self.step)
            total = sum(v for v in losses.values() if v is not None)
            # A non-finite loss only poisons the gradients, which are thrown away below: no step is taken.
            self.scaler.scale(total / cfg.grad_accum).backward()
            loss_sum += total.detach().float() / cfg.grad_accum
            for k, v in logs.items():
                logs_sum[k] = logs_sum.get(k, 0.0) + float(v) / cfg.grad_accum
        mean_loss = float(self._average_gradients(loss_sum))
        if not math.isfinite(mean_loss):
            terms = ", ".join(f"{k}={v:.4g}" for k, v in logs_sum.items())
            where = f" (rank {self.rank}: " if self.world > 1 else " ("
            raise TrainingError(f"loss is {mean_loss} at step {self.step}{where}{terms}); {self._diverged()} "
                                f"(or check the data)")
        self.scaler.unscale_(self.optimizer)
        health = {"loss": mean_loss}
        for group in self.optimizer.param_groups:
            norm = float(torch.nn.utils.clip_grad_norm_(group["params"], cfg.grad_clip or float("inf")))
            # fp16's GradScaler skips steps with inf gradients by design; without it they would poison the weights
            if not math.isfinite(norm) and not self.scaler.is_enabled():
                raise TrainingError(f"gradient norm of {group['name']} is {norm} at step {self.step} (loss "
                                    f"{mean_loss:.4g}); {self._diverged()} (or set train.grad_clip)")
            logs_sum[f"grad_norm/{group['name']}"] = norm
            if math.isfinite(norm):
                health[f"grad_norm/{group['name']}"] = norm
        self._check_health(health)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.task.model)
        self.step += 1
        logs_sum["lr"] = lr_at(self.step - 1, cfg)
        return logs_sum

    # -- the loop --------------------------------------------------------------------------------
    def _install_signal_handlers(self):
        def handler(signum, frame):
            self.stop_reason = signal.Signals(signum).name
            self.stop_signal = int(signum)
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread (e.g. called from a notebook worker)
                pass
        return previous

    def _evaluate(self) -> dict:
        if not hasattr(self.task, "evaluate"):
            return {}
        metrics = self.task.evaluate(self.eval_model, self.step)
        self.last_metrics = dict(metrics)
        if self.writer is not None:
            for k, v in metrics.items():
                self.writer.add_scalar(f"eval/{k}", v, self.step)
            print(f"eval step {self.step}: " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()), flush=True)
        best_spec = getattr(self.task, "best_metric", None)
        if best_spec and best_spec[0] in metrics:
            name, mode = best_spec
            value = metrics[name]
            better = self.best is None or (value < self.best if mode == "min" else value > self.best)
            if better:
                self.best = value
                self.save("best.pt")
        return metrics

    def _guarded(self, what: str, fn):
        """Run ``fn`` (evaluation, pictures); if it fails, save last.pt first, then stop with one line."""
        try:
            return fn()
        except CheckpointError:
            raise
        except Exception as e:
            if os.environ.get("LATENTDIFF_DEBUG"):
                raise
            saved = ""
            if self.world == 1:  # under torchrun saving is collective and the other ranks are not here
                if self.saved_step != self.step:
                    self.save("last.pt")
                saved = f"; the weights of step {self.step} are saved in {self.ckpt_dir / 'last.pt'}"
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            raise TrainingError(f"{what} failed at step {self.step} ({type(e).__name__}: {first}){saved}; "
                                f"fix the cause and rerun the same command to continue") from None

    def fit(self) -> dict:
        """Train until ``cfg.steps`` (or the time budget, or a signal). Returns the last evaluation."""
        from tqdm import tqdm

        cfg = self.cfg
        if self.main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.step or None)
            if self.step == 0:
                import yaml

                text = yaml.safe_dump(self.config_dict, sort_keys=False)
                self.writer.add_text("config", "```\n" + text + "\n```", 0)
        if self.step == 0 and self.saved_step is None:
            # The starting point is the first healthy candidate: a run that diverges before its first confirmed
            # checkpoint can still be resumed (from here) with a lower learning rate. One write per fresh run.
            self.save("last.pt")
        previous = self._install_signal_handlers()
        use_bar = self.main and sys.stderr.isatty()
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not use_bar, dynamic_ncols=True)
        start, last_log_t, last_log_step = time.time(), time.time(), self.step
        metrics: dict = {}
        try:
            while self.step < cfg.steps:
                logs = self.train_step()
                if self.step == self.guide_step:
                    self.guide_state = {k: v.detach().clone() for k, v in self.eval_model.state_dict().items()}
                bar.update(1)
                if use_bar:
                    bar.set_postfix(loss=f"{logs.get('loss', next(iter(logs.values()))):.4f}")
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    now = time.time()
                    ips = (self.step - last_log_step) * cfg.batch_size * cfg.grad_accum * self.world / max(
                        now - last_log_t, 1e-9)
                    last_log_t, last_log_step = now, self.step
                    if self.writer is not None:
                        for k, v in logs.items():
                            self.writer.add_scalar(f"train/{k}", v, self.step)
                        self.writer.add_scalar("train/images_per_sec", ips, self.step)
                    if self.main and not use_bar:
                        terms = " ".join(f"{k}={v:.4g}" for k, v in logs.items() if "/" not in k)
                        print(f"step {self.step}/{cfg.steps} {terms} {ips:.1f} img/s", flush=True)
                if cfg.max_minutes is not None and time.time() - start > 60 * cfg.max_minutes:
                    self.stop_reason = self.stop_reason or f"time budget of {cfg.max_minutes} min"
                # Decided once per step, so a signal that lands later is saved at the end of the next step
                # rather than skipped, and by all ranks together, so none is left waiting in an all-reduce.
                stopping = any_rank(self.stop_reason is not None, self.device)
                if stopping and self.stop_reason is None:
                    self.stop_reason = "another rank was stopped"
                finishing = self.step == cfg.steps or stopping
                if self.main and (self.step % cfg.eval_every == 0 or finishing):
                    metrics = self._guarded("the evaluation", self._evaluate)
                # Weights first, pictures after: a failed sample grid must never cost the interval's training.
                if self.step % cfg.checkpoint_every == 0 or finishing:
                    self.save("last.pt")
                if self.main and hasattr(self.task, "log_images") and (
                        self.step % cfg.image_every == 0 or finishing):
                    self._guarded("drawing the sample grids",
                                  lambda: self.task.log_images(self.writer, self.eval_model, self.step))
                if stopping:
                    break
        finally:
            self.train_seconds += time.time() - start
            bar.close()
            for sig, h in previous.items():
                signal.signal(sig, h)
            if self.writer is not None:
                self.writer.flush()
        if self.writer is not None and self.step >= cfg.steps and metrics:
            hparams = {k: v for k, v in flatten_config(self.config_dict).items()
                       if isinstance(v, int | float | str | bool)}
            self.writer.add_hparams(hparams, {f"hparam/{k}": v for k, v in metrics.items()}, run_name="hparams")
            self.writer.close()
        return metrics




def train(task, train_set, cfg: TrainConfig, run_dir, config_dict: dict, device, resume: bool,
          num_workers: int = 0, argv: list[str] | None = None, overwrite: bool = False) -> Trainer:
    """What both training commands do once their task is built: lock the folder, resume or start, fit, report.

    Prints how to resume after SIGINT/SIGTERM or a time budget (``trainer.stop_signal`` then holds the
    signal: the commands exit with 128 + it); raises TrainingError on NaN, CheckpointError on a failed save.
    """
    trainer = Trainer(task, train_set, cfg, run_dir, config_dict, device, num_workers)
    lock = lock_run_dir(run_dir, trainer.device)
    try:
        _train_locked(trainer, run_dir, config_dict, resume, overwrite, argv)
    finally:
        if lock is not None:
            lock.release()
    return trainer


def resume_command(argv: list[str], world: int = 1) -> str:
    """The command line that continues a stopped run: the same arguments less ``--overwrite``, after ``python`` for a
    script (train_ae.py) and as it is for an installed command (latentdiff-train-ae)."""
    cmd = shlex.join(a for a in argv if a != "--overwrite")
    if world > 1:
        return f"torchrun <the same options> {cmd}"
    return f"python {cmd}" if str(argv[0]).endswith(".py") else cmd


def _train_locked(trainer: Trainer, run_dir, config_dict: dict, resume: bool, overwrite: bool, argv) -> None:
    resuming = check_run_dir(run_dir, config_dict, resume, overwrite)
    if overwrite and is_main_process():
        clear_run_outputs(run_dir)
    if resuming:
        trainer.try_resume()
        if is_main_process():
            print(f"resuming {run_dir} from step {trainer.step}", flush=True)
    if trainer.world > 1:  # a rank that cannot see rank 0's last.pt would silently start over
        lo_hi = torch.tensor([-trainer.step, trainer.step], device=trainer.device)
        dist.all_reduce(lo_hi, op=dist.ReduceOp.MAX)
        if -lo_hi[0] != lo_hi[1]:
            raise TrainingError(f"ranks would resume {run_dir} from different steps ({-int(lo_hi[0])} to "
                                f"{int(lo_hi[1])}); put out_dir on a filesystem that every node shares")
    write_run_config(run_dir, config_dict)  # only now: a checkpoint that does not load leaves the folder as it was
    if is_main_process():
        for folder in (trainer.ckpt_dir, Path(run_dir)):  # left by a run killed while saving (the lock is ours)
            remove_stale_temporaries(folder)
        if hasattr(trainer.task, "write_run_files"):  # files a checkpoint names (stage two: its autoencoder copy)
            trainer.task.write_run_files(run_dir)
    trainer.fit()
    if is_main_process():
        if trainer.stop_reason is not None:
            print(f"stopped at step {trainer.step} ({trainer.stop_reason}); checkpoint saved to "
                  f"{trainer.ckpt_dir / 'last.pt'}; resume with: "
                  f"{resume_command(argv if argv is not None else sys.argv, trainer.world)}", flush=True)
        print(f"TensorBoard logs: tensorboard --logdir {Path(run_dir) / 'tb'}", flush=True)
