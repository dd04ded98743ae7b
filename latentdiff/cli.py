"""The commands' shared plumbing: the command line, and bad input as one clear line instead of a traceback."""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from latentdiff.config import ConfigError, dump_yaml, load_config


def parse_cli(cls, argv=None, description: str = "", extra_args=None):
    """The training commands' shared command line: ``--config FILE [--print-config] [--resume] key=value ...``.

    Returns ``(cfg, args)``. Config errors print one line and exit with status 2.
    ``extra_args(parser)`` may add script-specific flags.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="YAML recipe: a file (configs/shapes/ae_kl.yaml) or a recipe's name "
                                         "(shapes/ae_kl), read from the installed package or configs/")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in <out_dir>/<name> (also automatic when its last.pt exists)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in a run folder that holds another run (its checkpoints, TensorBoard "
                             "events and samples are deleted)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides such as train.steps=500")
    if extra_args:
        extra_args(parser)
    args = parser.parse_intermixed_args(argv)  # flags may come between the overrides (a=1 --resume b=2)
    try:
        cfg = load_config(cls, None if args.config is None else recipe_path(args.config), args.overrides)
    except ConfigError as e:
        exit_with_error(e)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        sys.exit(0)
    return cfg, args


def recipes_folder() -> Path:
    """The recipes: ``latentdiff/recipes/`` in an installed package (pyproject.toml ships configs/ there), else the
    source checkout's ``configs/``."""
    package = Path(__file__).resolve().parent
    installed = package / "recipes"
    return installed if installed.is_dir() else package.parent / "configs"


def recipe_path(config: str) -> str | Path:
    """``--config``: an existing file or a ``.yaml`` path as given, else the recipe of that name
    (``fashion_mnist/ldm_kl`` → ``<recipes>/fashion_mnist/ldm_kl.yaml``); one line listing the recipes otherwise."""
    if Path(config).is_file() or Path(config).suffix in (".yaml", ".yml"):
        return config
    recipe = recipes_folder() / f"{config}.yaml"
    if recipe.is_file():
        return recipe
    names = sorted(p.relative_to(recipes_folder()).with_suffix("").as_posix()
                   for p in recipes_folder().rglob("*.yaml"))
    raise ConfigError(f"--config {config!r}: no such file, nor a recipe of that name; recipes: {', '.join(names)}")


def finish_training(trainer):
    """Return ``trainer``, or exit with 128 + the signal number when SIGINT/SIGTERM stopped it.

    The checkpoint is saved by then; the status tells shells (``&&``) and job schedulers that the run
    was pre-empted rather than finished (130 for Ctrl-C, 143 for SIGTERM).
    """
    signum = getattr(trainer, "stop_signal", None)
    if signum is not None:
        sys.exit(128 + signum)
    return trainer


def exit_with_error(err, status: int = 2):
    """Print one clear line (no traceback) and exit.

    Under torchrun only global rank 0 prints, while every rank exits with ``status``: the errors that
    reach here (config, data, checkpoints, joint NaN/stop decisions) are the same on every rank, and N
    copies of one line hide it. ``LATENTDIFF_DEBUG=1`` makes every rank raise its traceback instead.
    """
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"error: {err}", file=sys.stderr)
    sys.exit(status)


@contextmanager
def user_errors():
    """Turn the project's expected failures into one line on stderr and exit status 2.

    Config, dataset, checkpoint and training problems are raised as exceptions whose message is
    already the line a user needs. ``LATENTDIFF_DEBUG=1`` shows the full traceback instead.
    """
    from latentdiff.checkpoints import CheckpointError
    from latentdiff.latents import LatentCacheError
    from latentdiff.runtime import TrainingError

    try:
        yield
    except (ConfigError, CheckpointError, TrainingError, LatentCacheError, FileNotFoundError, ValueError) as e:
        if os.environ.get("LATENTDIFF_DEBUG"):
            raise
        exit_with_error(e, getattr(e, "exit_status", 2))  # 128 + signal for an interrupted latent encoding


def parse_attrs(items: list[str]) -> dict:
    """``["color=red", "shape=triangle"]`` (repeated --attr NAME=VALUE) → {"color": "red", ...}."""
    attrs = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--attr {item!r}: write NAME=VALUE, e.g. --attr color=red")
        name, value = item.split("=", 1)
        attrs[name.strip()] = value.strip()
    return attrs


def condition_rows(ldm, num: int, attrs: dict, grid_by: str | None):
    """(num, A) attribute indices and the grid's row length; None when nothing is asked for.

    ``attrs`` fixes attributes for every sample; ``grid_by`` names one attribute that takes each of its
    values in turn, ``num // values`` samples per value (one grid row each). ``ldm``: a LatentDiffusion.
    """
    import torch

    from latentdiff.conditioning import UNSPECIFIED

    if not attrs and grid_by is None:
        return None, None
    if ldm.schema is None or not ldm.schema.names:
        raise ValueError("this run's dataset has no attributes")
    base = ldm.schema.parse(attrs) if attrs else torch.full((len(ldm.schema.names),), UNSPECIFIED)
    if grid_by is None:
        return base.view(1, -1).repeat(num, 1), None
    if grid_by not in ldm.schema.names:
        raise ValueError(f"--grid-by {grid_by!r}: not an attribute; valid: {', '.join(ldm.schema.names)}")
    a = ldm.schema.names.index(grid_by)
    values = ldm.schema.num_values(a)
    per_row = max(1, num // values)
    rows = base.view(1, -1).repeat(per_row * values, 1)
    rows[:, a] = torch.arange(values).repeat_interleave(per_row)
    return rows, per_row


# ----------------------------------------------------------------------------- early checks of sample.py's flags


def check_output_path(flag: str, path, extensions: tuple[str, ...] | None = None) -> None:
    """Before any work: ``path`` has a known extension and can be written (else one line naming ``flag``).

    ``extensions`` None means any image format Pillow can write. The nearest existing folder above
    ``path`` must be a folder where a file can be created (tried with a temporary file, so read-only
    mounts and permissions are both caught); missing folders below it are created later.
    """
    import tempfile
    from pathlib import Path

    p = Path(path).expanduser()
    suffix = p.suffix.lower()
    if extensions is None:
        from PIL import Image

        Image.init()
        known = sorted(e for e, fmt in Image.registered_extensions().items() if fmt in Image.SAVE)
        if suffix not in known:
            raise ValueError(f"{flag} {str(path)!r}: unknown image extension {suffix or '(none)'!r}; use .png "
                             f"(or another Pillow format: .jpg, .webp, ...)")
    elif suffix not in extensions:
        raise ValueError(f"{flag} {str(path)!r}: the file name must end in {' or '.join(extensions)}")
    if p.is_dir():
        raise ValueError(f"{flag} {str(path)!r} is a folder; give a file name")
    folder = p.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"{flag} {str(path)!r}: {folder} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise ValueError(f"{flag} {str(path)!r}: cannot write in {folder} ({e.strerror or e})") from None


def check_image_header(flag: str, path) -> None:
    """``path`` exists and its header is an image within Pillow's decompression-bomb limit (one line otherwise)."""
    import warnings
    from pathlib import Path

    from PIL import Image

    if not Path(path).is_file():
        raise ValueError(f"{flag} {str(path)!r}: the image does not exist")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            Image.open(path).close()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ValueError(f"{flag} {str(path)!r}: {str(e).split(' could be')[0]}") from None
        except OSError as e:
            raise ValueError(f"{flag} {str(path)!r}: cannot read it as an image ({type(e).__name__}); give a PNG or "
                             f"JPEG") from None


def read_mask(path):
    """``sample.py --mask``: a black (fill) and white (keep) image as a (H, W) bool array, True = keep.

    Refused in one line naming the file: a file that is not an image, any pixel other than pure black (0) or
    white (255) once read as greyscale (a grey or anti-aliased edge has no agreed side; the mask must say
    which pixels to fill), and a mask with no black pixel (nothing to fill). All black is allowed: nothing
    is kept, so the fills are plain samples.
    """
    from pathlib import Path

    import numpy as np
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--mask {path}: the mask does not exist")
    try:
        with Image.open(path) as picture:
            grey = np.asarray(picture.convert("L"))
    except OSError as e:
        raise ValueError(f"--mask {path}: cannot read it as an image ({type(e).__name__}); give a PNG") from None
    between = (grey != 0) & (grey != 255)
    if between.any():
        y, x = (int(i[0]) for i in np.nonzero(between))
        raise ValueError(f"--mask {path}: {int(between.sum())} of {grey.size} pixels are neither black (0) nor white "
                         f"(255), e.g. {int(grey[y, x])} at x={x}, y={y}; draw it in pure black (fill) and white "
                         f"(keep), without anti-aliasing or JPEG")
    if grey.all():
        raise ValueError(f"--mask {path} is all white (keep): nothing to fill; paint the part to fill black")
    return grey == 255


def check_autoguidance_flags(autoguidance: float | None, guide: str | None) -> None:
    """``--autoguidance W_A`` and ``--guide RUN`` of sample.py and evaluate.py, before anything is loaded."""
    import math

    if autoguidance is not None and not (math.isfinite(autoguidance) and autoguidance >= 0):
        raise ValueError(f"--autoguidance {autoguidance}: must be a finite number, 0 or more (1 = off)")
    if guide is not None and not Path(guide).is_dir():
        raise ValueError(f"--guide {guide}: no such run folder or exported model")


def check_sample_args(args) -> None:
    """sample.py's flags, checked before the model is loaded: each problem is one line naming the flag."""
    import math

    for flag, value, low in (("--num", args.num, 1), ("--batch-size", args.batch_size, 1), ("--steps", args.steps, 1)):
        if value is not None and value < low:
            raise ValueError(f"{flag} {value}: must be at least {low}")
    for flag, value in (("--guidance", args.guidance), ("--eta", args.eta), ("--strength", args.strength),
                        ("--classifier-scale", args.classifier_scale)):
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{flag} {value}: must be a finite number")
    check_autoguidance_flags(args.autoguidance, args.guide)
    if args.eta is not None and args.eta < 0:
        raise ValueError(f"--eta {args.eta}: must be 0 (deterministic) or more")
    if args.strength is not None and not 0.0 <= args.strength <= 1.0:
        raise ValueError(f"--strength {args.strength}: must be between 0 and 1")
    for flag, paths in (("--edit", args.edit), ("--inpaint", args.inpaint)):
        for path in paths or []:  # the header only: a decompression bomb is refused before it is decoded
            check_image_header(flag, path)
    if args.out is not None:
        check_output_path("--out", args.out)
    if args.npz is not None:
        check_output_path("--npz", args.npz, (".npz",))

