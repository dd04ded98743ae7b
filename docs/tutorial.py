# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # latentdiff, step by step: from q(x_t | x_0) to "a red triangle"
#
# This tutorial walks the derivation of "From VAEs to Diffusion Models" with latentdiff's own functions:
# the forward process, its posterior, the ε objective, one reverse step, three samplers, and then the two
# stages (an autoencoder, a diffusion over its codes) on the synthetic shapes at tiny size, sampled with
# attributes and used to edit. Equation numbers are Ho, Jain & Abbeel (2020)'s; [math.md](math.md) maps
# every equation to the function that computes it, [design.md](design.md) states the API.
#
# Every section computes an equation, **checks it against a closed form** (a failed check stops the run)
# and saves a figure (PNG, no plotting library) into the output folder.
#
# - As a notebook: `jupytext --to notebook docs/tutorial.py` (jupytext is not a dependency of latentdiff:
#   `pip install jupytext` for this), or open the file in VS Code, which runs the `# %%` cells as they are.
# - As a script: `python docs/tutorial.py [--out DIR]`. It ends with "tutorial: all N checks passed".
# - `LATENTDIFF_TUTORIAL_TINY=1`: a few dozen training steps per stage (what CI runs: about half a minute of CPU,
#   blurry pictures); otherwise 1000 + 1500 steps, roughly ten minutes on two CPU cores.
# - `LATENTDIFF_TUTORIAL_OUT=DIR` (or `--out DIR`): where figures and the two training runs go
#   (default `docs/tutorial_out/`, which git ignores). Rerunning continues the runs already there.

# %%
import math
import os
import sys
from pathlib import Path


def repository_root() -> Path:
    """The latentdiff checkout this file belongs to (a notebook has no ``__file__``: start from the cwd)."""
    start = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
    for folder in (start, *start.parents):
        if (folder / "latentdiff" / "__init__.py").is_file():
            return folder
    raise SystemExit("tutorial: run this from inside the latentdiff repository (no latentdiff/ folder found)")


ROOT = repository_root()
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from latentdiff import GaussianDiffusion, LatentDiffusion  # noqa: E402
from latentdiff.viz import image_grid, reverse_process_scatter, save_png, scatter_image  # noqa: E402

TINY = os.environ.get("LATENTDIFF_TUTORIAL_TINY", "") == "1"
IN_NOTEBOOK = "ipykernel" in sys.modules
out_arg = sys.argv[sys.argv.index("--out") + 1] if "--out" in sys.argv[1:-1] and not IN_NOTEBOOK else None
OUT = Path(out_arg or os.environ.get("LATENTDIFF_TUTORIAL_OUT") or ROOT / "docs" / "tutorial_out")
OUT.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
print(f"tutorial: {'TINY' if TINY else 'full'} mode, figures and runs in {OUT}")

CHECKS = []


def check(name: str, ok: bool, detail: str) -> None:
    """One closed-form check of the tutorial: printed, counted, and a stop when it fails."""
    print(f"check {len(CHECKS) + 1}: {name}: {detail} -> {'ok' if ok else 'FAILED'}")
    if not ok:
        raise AssertionError(f"tutorial check failed: {name}: {detail}")
    CHECKS.append(name)


def show(image: torch.Tensor, name: str, scale: int = 3) -> Path:
    """Save a (C, H, W) picture in [0, 1] as OUT/name (enlarged ``scale`` times); display it in a notebook."""
    big = F.interpolate(image[None], scale_factor=scale, mode="nearest")[0] if scale > 1 else image
    path = save_png(big, OUT / name)
    print(f"figure: {path}")
    if IN_NOTEBOOK:
        from IPython.display import Image, display

        display(Image(filename=str(path)))
    return path


# %% [markdown]
# ## 1. The forward process q(x_t | x_0)
#
# The fixed "encoder" of a diffusion model adds Gaussian noise in T small steps,
# q(x_t | x_{t−1}) = N(√(1−β_t) x_{t−1}, β_t I) (Eq. 2). Gaussians compose, so any level is one draw away
# from the data (Eq. 4):
#
#     q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I),   α_t = 1 − β_t,   ᾱ_t = Π_{s≤t} α_s
#
# `GaussianDiffusion.q_sample(x0, t, noise)` is x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε. (In code a timestep is an
# index 0..T−1: index i is the paper's t = i + 1.) We take pictures from the shapes dataset, images in
# [−1, 1], and check the empirical mean and variance of many draws against √ᾱ_t x_0 and 1 − ᾱ_t.
# ([math.md](math.md) §3.)

# %%
from latentdiff.data.shapes import ShapesDataset  # noqa: E402

diffusion = GaussianDiffusion(num_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
T = diffusion.num_timesteps
pictures = torch.stack([ShapesDataset("test", size=4)[i][0] for i in range(4)])  # (4, 3, 32, 32)

# ᾱ_T from the schedule's definition, β_t evenly spaced from 1e-4 to 0.02: the last level is (almost) pure noise
betas = [1e-4 + (0.02 - 1e-4) * i / (T - 1) for i in range(T)]
abar_T = math.prod(1 - b for b in betas)
check("ᾱ_T = Π(1 − β_t)", abs(float(diffusion.alphas_cumprod[-1]) - abar_T) < 1e-12 * abar_T + 1e-15,
      f"{float(diffusion.alphas_cumprod[-1]):.6e} vs {abar_T:.6e}; √ᾱ_T = {math.sqrt(abar_T):.4f}")

n, t_index = 2000, 299
abar = float(diffusion.alphas_cumprod[t_index])
x0 = pictures[0].expand(n, -1, -1, -1)
x_t = diffusion.q_sample(x0, torch.full((n,), t_index), torch.randn(x0.shape))
mean_error = float((x_t.mean(0) - math.sqrt(abar) * pictures[0]).abs().max())
tolerance = 5 * math.sqrt((1 - abar) / n)  # five standard errors of a mean of n draws
check("E[x_t | x_0] = √ᾱ_t x_0 (Eq. 4)", mean_error < tolerance,
      f"largest pixel error {mean_error:.4f} < {tolerance:.4f} at t = {t_index + 1}")
variance = float(x_t.var(0).mean())
check("Var[x_t | x_0] = 1 − ᾱ_t (Eq. 4)", abs(variance / (1 - abar) - 1) < 0.01,
      f"{variance:.4f} vs {1 - abar:.4f}")

# the figure: each picture (a row) at 11 levels from t = 1 to t = T, one ε per picture slid along the schedule
levels = torch.linspace(0, T - 1, 11).round().long()
eps = torch.randn(pictures.shape)
frames = torch.stack([diffusion.q_sample(pictures, t.expand(4), eps) for t in levels], 1)  # (4, 11, 3, 32, 32)
show(image_grid(frames.flatten(0, 1), nrow=len(levels)), "1_forward_process.png")

# %% [markdown]
# ## 2. The posterior q(x_{t−1} | x_t, x_0)
#
# The reverse of one forward step is intractable on its own, but given x_0 it is a Gaussian in closed form
# (Bayes' rule on Eqs. 2 and 4; Eqs. 6–7):
#
#     q(x_{t−1} | x_t, x_0) = N(μ̃_t, β̃_t I),
#     μ̃_t = √ᾱ_{t−1} β_t / (1−ᾱ_t) · x_0 + √α_t (1−ᾱ_{t−1}) / (1−ᾱ_t) · x_t,   β̃_t = (1−ᾱ_{t−1}) / (1−ᾱ_t) · β_t
#
# `GaussianDiffusion.q_posterior(x0, x_t, t)` returns (μ̃_t, β̃_t). We check it twice: against the
# coefficients written out here, and against simulation: draw x_{t−1} ~ q(x_{t−1} | x_0), take one forward
# step to x_t, and the error x_{t−1} − μ̃_t must have variance β̃_t and be uncorrelated with x_t.
# ([math.md](math.md) §4.)

# %%
t_index = 499
beta, abar, abar_prev = (float(v[t_index]) for v in (diffusion.betas, diffusion.alphas_cumprod,
                                                      diffusion.alphas_cumprod_prev))
coef_x0 = math.sqrt(abar_prev) * beta / (1 - abar)
coef_xt = math.sqrt(1 - beta) * (1 - abar_prev) / (1 - abar)
beta_tilde = (1 - abar_prev) / (1 - abar) * beta

n = 500
x0 = pictures[0].expand(n, -1, -1, -1)
t = torch.full((n,), t_index)
x_prev = diffusion.q_sample(x0, t - 1, torch.randn(x0.shape))  # x_{t−1} ~ q(x_{t−1} | x_0)
x_t = math.sqrt(1 - beta) * x_prev + math.sqrt(beta) * torch.randn(x0.shape)  # one step of Eq. 2
mu, var = diffusion.q_posterior(x0, x_t, t)
gap = float((mu - (coef_x0 * x0 + coef_xt * x_t)).abs().max())
check("μ̃_t = the coefficients of Eq. 7", gap < 1e-5 and abs(float(var.flatten()[0]) / beta_tilde - 1) < 1e-6,
      f"largest difference {gap:.1e}; β̃_t = {float(var.flatten()[0]):.6f} vs {beta_tilde:.6f}")
residual = x_prev - mu
ratio = float(residual.var() / beta_tilde)
correlation = float(torch.corrcoef(torch.stack([residual.flatten(), x_t.flatten()]))[0, 1])
check("x_{t−1} − μ̃_t has variance β̃_t and no correlation with x_t (Bayes, simulated)",
      abs(ratio - 1) < 0.02 and abs(correlation) < 0.01,
      f"variance / β̃_t = {ratio:.4f}, correlation {correlation:+.4f} ({n} draws of {pictures[0].numel()} pixels)")

# the figure: the reverse process *if x_0 were known*: from x_T ~ N(0, I), draw x_{t−1} ~ q(x_{t−1} | x_t, x_0) down
# to t = 0 (columns: t = 1000, 900, ..., 100, then the end). The last step has β̃_1 = 0 and μ̃_1 = x_0: it lands
# on the picture exactly. Sections 3-4 learn to take these steps without x_0.
x, frames = torch.randn(pictures.shape), []
for i in reversed(range(T)):
    if (i + 1) % 100 == 0:  # the paper's t = 1000, 900, ..., 100
        frames.append(x)
    mu, var = diffusion.q_posterior(pictures, x, torch.full((4,), i))
    x = mu + var.sqrt() * torch.randn(x.shape)
gap = float((x - pictures).abs().max())
check("the chain of posteriors ends on x_0 (β̃_1 = 0, μ̃_1 = x_0)", gap < 1e-6, f"largest difference {gap:.1e}")
frames.append(x)
show(image_grid(torch.stack(frames, 1).flatten(0, 1), nrow=len(frames)), "2_posterior.png")

# %% [markdown]
# ## 3. The ε objective
#
# The bound's terms L_{t−1} compare q(x_{t−1} | x_t, x_0) with the model's p_θ(x_{t−1} | x_t). Writing the
# model's mean through a noise prediction ε_θ (Eq. 11, next section) turns each term into a weighted
# regression of the noise, and Ho et al. train the unweighted one (Eq. 14):
#
#     L_simple = E_{t, x_0, ε} ‖ε − ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t)‖²
#
# (`GaussianDiffusion.training_loss`, the mean over dimensions). Its minimiser is E[ε | x_t]. For data
# N(0, s²I) that is known: x_t ~ N(0, ᾱ_t s² + 1 − ᾱ_t) and
#
#     ε*(x_t, t) = √(1−ᾱ_t) x_t / (ᾱ_t s² + 1 − ᾱ_t),   L_simple at t = Var[ε | x_t] = ᾱ_t s² / (ᾱ_t s² + 1 − ᾱ_t)
#
# We check the loss of ε* against that, then let the objective *find* ε*: a "network" with one number
# k_t per timestep, ε_θ = k_t x_t, trained on `training_loss`, must land on k_t = √(1−ᾱ_t) / (ᾱ_t s² + 1 − ᾱ_t).
# ([math.md](math.md) §5, Eqs. 8–14.)

# %%
s, dim = 0.5, 16


def exact_eps(diffusion, s):
    """The Bayes-optimal ε predictor for data N(0, s²I) (tests/test_diffusion.py: exact_eps)."""
    def model(x_t, t, cond=None):
        a = diffusion.alphas_cumprod[t].to(x_t.dtype).view(-1, *([1] * (x_t.dim() - 1)))
        return (1 - a).sqrt() * x_t / (a * s**2 + 1 - a)
    return model


abar_all = diffusion.alphas_cumprod.float()
for t_index in (99, 299, 599):
    a = float(abar_all[t_index])
    x0 = s * torch.randn(20000, dim)
    loss = float(diffusion.training_loss(exact_eps(diffusion, s), x0, t=torch.full((20000,), t_index)))
    closed = a * s**2 / (a * s**2 + 1 - a)
    check(f"L_simple of ε* at t = {t_index + 1} = Var[ε | x_t]", abs(loss / closed - 1) < 0.03,
          f"{loss:.4f} vs {closed:.4f}")


class ScalePerTimestep(torch.nn.Module):
    """ε_θ(x_t, t) = k_t x_t: one learned number per timestep, the family ε* belongs to."""

    def __init__(self, num_timesteps):
        super().__init__()
        self.k = torch.nn.Parameter(torch.zeros(num_timesteps))

    def forward(self, x_t, t, cond=None):
        return self.k[t].view(-1, *([1] * (x_t.dim() - 1))) * x_t


model = ScalePerTimestep(T)
optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
generator = torch.Generator().manual_seed(0)
for _ in range(300):
    loss = diffusion.training_loss(model, s * torch.randn(8192, dim, generator=generator), generator=generator)
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
k_exact = (1 - abar_all).sqrt() / (abar_all * s**2 + 1 - abar_all)
k_error = float((model.k.detach() - k_exact).abs().mean() / k_exact.abs().mean())
check("training on L_simple finds ε*: learned k_t vs √(1−ᾱ_t)/(ᾱ_t s² + 1 − ᾱ_t)", k_error < 0.05,
      f"mean relative error {k_error:.4f}")

# the figure: k_t against t (white: learned, blue: the closed form), t from left to right
ts = torch.linspace(-1, 1, T)
k_top = float(k_exact.max()) * 1.1
show(scatter_image(torch.stack([ts, 2 * model.k.detach() / k_top - 1], 1),
                   torch.stack([ts, 2 * k_exact / k_top - 1], 1), size=256, extent=1.05), "3_eps_objective.png", 1)

# %% [markdown]
# ## 4. One reverse step
#
# The model's transition is p_θ(x_{t−1} | x_t) = N(μ_θ, σ_t² I) with the posterior's form of the mean, x_0
# replaced by what ε_θ implies (Eq. 11, Algorithm 2's step):
#
#     μ_θ(x_t, t) = (x_t − β_t / √(1−ᾱ_t) · ε_θ(x_t, t)) / √α_t,   x_{t−1} = μ_θ + σ_t z
#
# `GaussianDiffusion.p_mean_variance` computes it (through x̂_0, so that x_0- and v-predictions share the
# formula). Two checks: with the *true* noise as ε_θ, Eq. 11 is exactly the posterior mean μ̃_t(x_t, x_0)
# (Eq. 10: the reason the ε-parameterisation works); with ε* on data N(0, s²I), μ_θ is exactly
# E[x_{t−1} | x_t] = √α_t v_{t−1} / v_t · x_t, where v_t = ᾱ_t s² + 1 − ᾱ_t. ([math.md](math.md) §5.)

# %%
t_index = 299
beta, abar, abar_prev = (float(v[t_index]) for v in (diffusion.betas, diffusion.alphas_cumprod,
                                                      diffusion.alphas_cumprod_prev))
t = torch.full((4,), t_index)
noise = torch.randn(pictures.shape)
x_t = diffusion.q_sample(pictures, t, noise)
step = diffusion.p_mean_variance(lambda x, t, cond=None: noise, x_t, t)  # ε_θ = the true ε
eq11 = (x_t - beta / math.sqrt(1 - abar) * noise) / math.sqrt(1 - beta)
posterior_mean, _ = diffusion.q_posterior(pictures, x_t, t)
gaps = float((step.mean - eq11).abs().max()), float((step.mean - posterior_mean).abs().max())
check("μ_θ = Eq. 11 = μ̃_t(x_t, x_0) when ε_θ is the true ε (Eq. 10)", max(gaps) < 1e-4,
      f"largest differences {gaps[0]:.1e} (Eq. 11), {gaps[1]:.1e} (posterior)")

x_t_gauss = torch.randn(1000, dim) * math.sqrt(abar * s**2 + 1 - abar)
gauss_step = diffusion.p_mean_variance(exact_eps(diffusion, s), x_t_gauss, torch.full((1000,), t_index))
v_t, v_prev = abar * s**2 + 1 - abar, abar_prev * s**2 + 1 - abar_prev
gap = float((gauss_step.mean - math.sqrt(1 - beta) * v_prev / v_t * x_t_gauss).abs().max())
check("μ_θ of ε* = E[x_{t−1} | x_t] for Gaussian data", gap < 1e-5, f"largest difference {gap:.1e}")

# the figure: x_t, the step's prediction x̂_0, its mean μ_θ and the drawn x_{t−1}, one row per picture
x_prev = step.mean + step.variance.sqrt() * torch.randn(x_t.shape)
show(image_grid(torch.stack([x_t, step.x0_hat, step.mean, x_prev], 1).flatten(0, 1), nrow=4), "4_reverse_step.png")

# %% [markdown]
# ## 5. DDPM, DDIM and DPM-Solver++
#
# Sampling runs the reverse process from x_T ~ N(0, I). `GaussianDiffusion.sample(model, shape, sampler=...)`:
#
# - `"ddpm"`: Algorithm 2, every one of the T steps, fresh noise at each;
# - `"ddim"` (Song et al. 2021): the same marginals without the Markov chain; with η = 0 a deterministic
#   map that can skip steps (here 100);
# - `"dpm_solver++"` (Lu et al. 2022): a second-order solver of the same probability-flow ODE (here 20 steps,
#   spaced evenly in log-SNR).
#
# With ε* every sampler should return data N(0, s²I): the sample variance is checked against s² (with the
# number of network evaluations each used). The deterministic two solve one ODE whose exact solution is
# known for Gaussian data, x_0 = s · x_T / √(ᾱ_{t_S} s² + 1 − ᾱ_{t_S}) from the first level t_S; at equal
# steps DPM-Solver++ lands far closer to it than DDIM. ([math.md](math.md) §6.)

# %%
s = 2.0
model = exact_eps(diffusion, s)
calls = {"n": 0}


def counted(x_t, t, cond=None):
    calls["n"] += 1
    return model(x_t, t, cond)


x_T = torch.randn(10000, 2, generator=torch.Generator().manual_seed(1))
runs = {"ddpm": {"steps": None}, "ddim": {"steps": 100}, "dpm_solver++": {"steps": 20, "timestep_spacing": "logsnr"}}
strips = []
for sampler, settings in runs.items():
    calls["n"] = 0
    samples, trajectory = diffusion.sample(counted, x_T.shape, sampler=sampler, noise=x_T, return_trajectory=True,
                                           trajectory_every=max(1, (settings["steps"] or T) // 8),
                                           generator=torch.Generator().manual_seed(2), **settings)
    ratio = float(samples.var() / s**2)
    check(f"{sampler} samples have variance s²", abs(ratio - 1) < 0.05 and calls["n"] == (settings["steps"] or T),
          f"variance / s² = {ratio:.4f} with {calls['n']} network evaluations")
    strips.append(reverse_process_scatter({k: v[:, :500] if k != "t" else v for k, v in trajectory.items()},
                                          reference=s * torch.randn(500, 2), columns=9, size=96, extent=3 * s))

ode_errors = {}
for sampler in ("ddim", "dpm_solver++"):
    levels = diffusion.spaced_timesteps(20, "logsnr")
    first = float(diffusion.alphas_cumprod[levels[-1]])
    exact = s * x_T / math.sqrt(first * s**2 + 1 - first)
    samples = diffusion.sample(model, x_T.shape, sampler=sampler, steps=20, noise=x_T, timestep_spacing="logsnr")
    ode_errors[sampler] = float((samples - exact).norm() / exact.norm())
check("20 steps: DPM-Solver++ far closer to the exact ODE solution than DDIM",
      ode_errors["dpm_solver++"] < 0.05 and ode_errors["ddim"] > 4 * ode_errors["dpm_solver++"],
      f"relative errors DDIM {ode_errors['ddim']:.4f}, DPM-Solver++ {ode_errors['dpm_solver++']:.4f}")

# the figure: per sampler (DDPM, DDIM, DPM-Solver++) two strips over t from x_T (left) to the end (right): the cloud
# x_t above its prediction x̂_0, white over data drawn from N(0, s²I) in blue
show(torch.cat(strips, 1), "5_samplers.png", 1)

# %% [markdown]
# ## 6. The two stages on shapes: an autoencoder, then a diffusion over its codes
#
# Stage one compresses a 32×32 picture into a 4×8×8 code with a KL-regularised VAE (its bound, the ELBO:
# reconstruction + β·KL). Its small β leaves the codes' distribution far from N(0, I), so decoding
# z ~ N(0, I) gives poor pictures: the diffusion of sections 1–5 becomes the *prior* over the codes.
# Stage two trains the ε objective on the (normalised) codes, conditioned on the attributes (colour,
# size, shape) with condition dropout, so that classifier-free guidance can ask for "a red triangle".
#
# Both stages are library calls (`latentdiff.stages.train_autoencoder`, `train_latent_diffusion`) on the
# project's recipes (`configs/shapes/ae_kl.yaml`, `ldm_kl.yaml`) with smaller settings as overrides, exactly
# the `key=value` overrides of `train_ae.py` / `train_diffusion.py`. The checks: the code has the shape the
# recipe's downsampling gives, the autoencoder reconstructs held-out pictures better than the best
# constant picture (the test set's mean), and the denoiser's held-out L_simple beats 1, the exact loss of
# predicting ε = 0 (E‖ε‖² per dimension).

# %%
from latentdiff.config import AERunConfig, LDMRunConfig, load_config  # noqa: E402
from latentdiff.stages import train_autoencoder, train_latent_diffusion  # noqa: E402

runs_dir = OUT / "runs"
mode = "tiny" if TINY else "full"
# bound by steps alone (not the recipe's minutes); one evaluation, sample grid and checkpoint at the end
common = [f"out_dir={runs_dir}", "train.max_minutes=null", "train.log_every=100"]
if TINY:  # CI: seconds per stage; the pictures are blurs, the checks still hold
    ae_overrides = ["train.steps=40", "train.warmup_steps=5", "train.batch_size=32", "data.train_size=512",
                    "data.test_size=64", "eval_samples=32", "train.eval_every=40", "train.image_every=40",
                    "train.checkpoint_every=40"]
    ldm_overrides = ["train.steps=30", "train.warmup_steps=5", "train.batch_size=32", "data.train_size=512",
                     "data.test_size=64", "denoiser.channels=32", "bound_examples=16", "bound_every=30",
                     "sample.num=8", "sample.steps=5", "train.eval_every=30", "train.image_every=30",
                     "train.checkpoint_every=30"]
else:  # roughly ten minutes for both on two CPU cores
    ae_overrides = ["train.steps=1000", "data.train_size=20000", "data.test_size=256", "eval_samples=256",
                    "train.eval_every=500", "train.image_every=500", "train.checkpoint_every=500"]
    ldm_overrides = ["train.steps=1500", "data.train_size=20000", "data.test_size=256", "bound_examples=64",
                     "bound_every=1500", "train.eval_every=500", "train.image_every=500", "train.checkpoint_every=500"]

ae_cfg = load_config(AERunConfig, ROOT / "configs/shapes/ae_kl.yaml",
                     [f"name=tutorial_ae_{mode}", *common, *ae_overrides])
train_autoencoder(ae_cfg, argv=["docs/tutorial.py"])  # continues (or finds finished) a run already there
ldm_cfg = load_config(LDMRunConfig, ROOT / "configs/shapes/ldm_kl.yaml",
                      [f"name=tutorial_ldm_{mode}", f"ae.run={runs_dir / ae_cfg.name}", *common, *ldm_overrides])
train_latent_diffusion(ldm_cfg, argv=["docs/tutorial.py"])
ldm = LatentDiffusion.from_run(runs_dir / ldm_cfg.name)  # the EMA weights, the run's own copy of stage one

f = 2 ** (len(ae_cfg.model.channel_mults) - 1)  # one halving per level after the first
expected_shape = (ae_cfg.model.latent_channels, 32 // f, 32 // f)
check("the code of a 32×32 picture is C × 32/f × 32/f", tuple(ldm.latent_shape) == expected_shape,
      f"{tuple(ldm.latent_shape)} vs {expected_shape} (f = {f})")

test_set = ShapesDataset("test", size=256)
held_out = torch.stack([test_set[i][0] for i in range(len(test_set))])
attributes = torch.stack([test_set[i][1] for i in range(len(test_set))])
reconstruction_mse = float((ldm.decode(ldm.encode(held_out)) - held_out).pow(2).mean())
constant_mse = float((held_out - held_out.mean(0)).pow(2).mean())  # the least MSE any one fixed picture has
check("reconstructions beat the best constant picture", reconstruction_mse < constant_mse,
      f"MSE {reconstruction_mse:.4f} < {constant_mse:.4f}")
z0 = ldm.encode(held_out)
with torch.no_grad():
    held_out_loss = float(ldm.diffusion.training_loss(ldm.denoiser, z0.repeat(4, 1, 1, 1), attributes.repeat(4, 1),
                                                      generator=torch.Generator().manual_seed(0)))
check("held-out L_simple of the codes beats predicting ε = 0 (loss 1)", held_out_loss < 1.0,
      f"{held_out_loss:.4f} < 1")
show(image_grid(torch.cat([held_out[:8], ldm.decode(z0[:8])]), nrow=8), "6_reconstructions.png")

# %% [markdown]
# ## 7. Attributes and an edit
#
# `ldm.sample(n, attrs={"color": "red", "shape": "triangle"})` runs the run's sampler (DDIM, with
# classifier-free guidance ε̂ = ε(x_t, ∅) + w (ε(x_t, a) − ε(x_t, ∅)) in a limited interval of t) on the
# codes and decodes them. The size, not asked for, is drawn from the training data's combinations
# (`sample.unasked: data`). `ldm.edit(images, attrs={"color": "blue"}, strength=0.5)` is SDEdit: the codes go
# up to level t = 0.5 T with Eq. 4 and come back down conditioned on the new colour; strength 0 changes
# nothing but the autoencoder's round trip. (In TINY mode the pictures are blurs: the checks are about
# what the calls promise, not about quality; the full mode also measures the asked colour.)

# %%
from latentdiff.data.shapes import COLORS  # noqa: E402

red, triangle = ldm.schema.index("color", "red"), ldm.schema.index("shape", "triangle")
steps = 10 if TINY else None  # None: the run's own sampler settings (DDIM, 50 steps)
red_triangles, conditions = ldm.sample(16, attrs={"color": "red", "shape": "triangle"}, steps=steps,
                                       generator=torch.Generator().manual_seed(0), return_conditions=True)
known = {tuple(row.tolist()) for row in ldm.attribute_prior.rows}
check("'a red triangle' conditions on red, triangle and a size the data has with them",
      bool((conditions[:, 0] == red).all() and (conditions[:, 2] == triangle).all())
      and all(tuple(row.tolist()) in known for row in conditions),
      f"sizes drawn: {sorted(set(conditions[:, 1].tolist()))}")
show(image_grid(red_triangles, nrow=8), "7_red_triangles.png")

same = ldm.edit(red_triangles, attrs={"color": "blue"}, strength=0.0)
check("an edit of strength 0 is the autoencoder's round trip", torch.equal(same, ldm.decode(ldm.encode(red_triangles))),
      "decode(encode(x)), bit for bit")
blue = ldm.edit(red_triangles, attrs={"color": "blue"}, strength=0.5, steps=steps,
                generator=torch.Generator().manual_seed(1))
show(image_grid(torch.cat([red_triangles[:8], blue[:8]]), nrow=8), "7_edit_red_to_blue.png")


def colour_of(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] → (N,) index into COLORS: the saturated colour nearest the mean of the lit pixels
    (read off the pixels, by no network; tests/test_conditional_color.py reads colours the same way)."""
    rgb = (images + 1) / 2
    lit = (rgb.max(1, keepdim=True).values > 0.5).float()  # the shape; the background is black
    mean = (rgb * lit).sum((2, 3)) / lit.sum((2, 3)).clamp(min=1)  # (N, 3)
    return torch.cdist(mean, torch.tensor(list(COLORS.values()), dtype=torch.float32)).argmin(1)


check("the colour reader reads the test pictures' own colours", torch.equal(colour_of(held_out), attributes[:, 0]),
      f"{len(held_out)} of {len(held_out)}")
accuracy = {"red": float((colour_of(red_triangles) == red).float().mean()),
            "blue": float((colour_of(blue) == ldm.schema.index("color", "blue")).float().mean())}
print(f"colour read off the pictures: red {accuracy['red']:.2f} of the red triangles, blue {accuracy['blue']:.2f} "
      f"of their edits (chance 1/6)")
if not TINY:
    check("samples asked for red are red far above chance (1/6)", accuracy["red"] > 0.5, f"{accuracy['red']:.2f}")

# %%
print(f"tutorial: all {len(CHECKS)} checks passed; figures in {OUT}")
