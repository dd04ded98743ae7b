#!/usr/bin/env python
"""Attribute accuracy and diversity of samples asked for attributes, judged in pixel space.

    python bench/attribute_sampling.py --run runs/shapes_ldm_kl --guidance 3
    python bench/attribute_sampling.py --run runs/fashion_mnist_ldm_kl --guidance 2 --per-value 50

The judge is the pixel-space CNN that ``evaluate.py`` trains on the dataset's real labels
(``latentdiff.metrics.classifier``; cached in <run's parent>/classifiers/), never a guidance
classifier. Three settings, each a row:

    all        every attribute asked for (all combinations, ``--per-value`` samples each, up to --max):
               per-attribute and joint accuracy
    single a   only attribute a asked for, one group per value: accuracy on a, and how the other
               attributes spread (normalised entropy of the judge's predictions, 1 = uniform)
    free       nothing asked for: the spread of every attribute (the unconditional model; with --unasked data
               every attribute drawn from the data and guided as asked ones are)

    edit s     ``--edit-strength S ...``: held-out images edited (``LatentDiffusion.edit``, ``--edit-mode``)
               to another value of ``--edit-attr`` at strength s: accuracy on the asked value, and how
               often the other attributes keep the input's true value ("kept")

``--classifier RUN/classifier --classifier-scale S`` adds the same rows for post-hoc classifier
guidance of the run's unconditional model (w = 0 unless --guidance says otherwise).
Prints a markdown table, writes bench/results/attribute_sampling_<run>.json.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_results  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    # Unset sampler settings are the run's own (LatentDiffusion.sampling_settings), as sample.py uses them.
    p.add_argument("--guidance", type=float, default=None, help="default: the run's sample.guidance_scale")
    p.add_argument("--sampler", choices=["ddpm", "ddim", "dpm_solver++"], default=None,
                   help="default: the run's sample.sampler")
    p.add_argument("--steps", type=int, default=None, help="default: the run's sample.steps")
    p.add_argument("--eta", type=float, default=None, help="default: the run's sample.eta")
    p.add_argument("--guidance-interval", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="guide only where LO <= t/T <= HI (default: the run's sample.guidance_interval)")
    p.add_argument("--unasked", choices=["model", "data"], default=None,
                   help="attributes not asked for: left to the network, or drawn from the training data "
                        "(default: the run's sample.unasked)")
    p.add_argument("--tag", default="", help="appended to the results file's name (e.g. for a settings sweep)")
    p.add_argument("--per-value", type=int, default=16, help="samples per asked combination / value")
    p.add_argument("--max", type=int, default=1000, help="at most this many samples per setting")
    p.add_argument("--classifier", default=None, help="post-hoc guidance classifier folder (train_classifier.py)")
    p.add_argument("--classifier-scale", type=float, default=1.0)
    p.add_argument("--edit-strength", type=float, nargs="*", default=[], metavar="S",
                   help="also edit held-out images at these strengths (e.g. 0.3 0.5)")
    p.add_argument("--edit-attr", default=None, help="the attribute the edits change (default: the first)")
    p.add_argument("--edit-mode", choices=["sdedit", "invert"], nargs="+", default=["sdedit"])
    p.add_argument("--edit-num", type=int, default=192, help="held-out images edited per strength")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=250)
    args = p.parse_args()

    import torch

    from latentdiff.conditioning import UNSPECIFIED
    from latentdiff.metrics.classifier import attribute_accuracy, load_or_train_classifier, normalised_entropy
    from latentdiff.pipeline import LatentDiffusion
    from latentdiff.runtime import flush_denormals

    flush_denormals()
    ldm = LatentDiffusion.from_run(args.run)
    schema = ldm.schema
    if schema is None or not schema.names:
        sys.exit(f"error: {args.run}: its dataset has no attributes to ask for")
    s = ldm.sampling_settings(args.sampler, args.steps, args.eta, args.guidance, args.guidance_interval,
                              args.unasked)
    judge, record, _ = load_or_train_classifier(ldm.config["data"], Path(args.run).parent / "classifiers")
    A = len(schema.names)
    generator = torch.Generator().manual_seed(args.seed)
    extra, guide = {}, {}
    if args.classifier:
        extra = {"classifier": args.classifier, "classifier_scale": args.classifier_scale}
        guide = {"classifier": ldm.load_classifier(args.classifier), "classifier_scale": args.classifier_scale}

    def sample(asked: torch.Tensor, guidance: float) -> torch.Tensor:
        attrs = asked if ldm.conditional or guide else None  # unconditional: attributes only through a classifier
        if not ldm.conditional:
            guidance = 1.0
        images = ldm.sample(asked.shape[0], attrs=attrs, guidance_scale=guidance, sampler=s["sampler"],
                            steps=s["steps"], eta=s["eta"], guidance_interval=s["guidance_interval"],
                            unasked=s["unasked"], generator=generator, batch_size=args.batch_size, **guide)
        return judge.judge(images)[1]

    rows = []
    # all attributes asked for: every combination
    combos = list(itertools.product(*[range(schema.num_values(a)) for a in range(A)]))
    per = max(1, min(args.per_value, args.max // len(combos)))
    asked = torch.tensor(combos).repeat_interleave(per, dim=0)
    predicted = sample(asked, s["guidance_scale"])
    acc = attribute_accuracy(predicted, asked, schema)
    rows.append({"asked": "all", "n": len(asked), "joint": acc["joint"],
                 **{f"acc {n}": acc[n] for n in schema.names}})
    # one attribute asked for, the rest free
    for a, name in enumerate(schema.names):
        k = schema.num_values(a)
        per = max(1, min(args.per_value * 4, args.max // k))
        asked = torch.full((k * per, A), UNSPECIFIED)
        asked[:, a] = torch.arange(k).repeat_interleave(per)
        predicted = sample(asked, s["guidance_scale"])
        acc = attribute_accuracy(predicted, asked, schema)
        spread = {f"spread {other}": sum(normalised_entropy(predicted[asked[:, a] == v, b], schema.num_values(b))
                                         for v in range(k)) / k
                  for b, other in enumerate(schema.names) if b != a}
        rows.append({"asked": name, "n": len(asked), "joint": acc["joint"], f"acc {name}": acc[name], **spread})
    # nothing asked for: the unconditional model (w = 0), or with unasked=data every attribute drawn from the data
    asked = torch.full((min(args.max, args.per_value * 16), A), UNSPECIFIED)
    predicted = sample(asked, s["guidance_scale"] if s["unasked"] == "data" else 0.0)
    rows.append({"asked": "none", "n": len(asked),
                 **{f"spread {n}": normalised_entropy(predicted[:, b], schema.num_values(b))
                    for b, n in enumerate(schema.names)}})
    # edits of held-out images: one attribute changed, the rest should stay
    if args.edit_strength:
        from latentdiff.builders import build_data
        from latentdiff.config import DataConfig, from_dict

        a = schema.names.index(args.edit_attr) if args.edit_attr else 0
        k = schema.num_values(a)
        test = build_data(from_dict(DataConfig, ldm.config["data"]), "test")
        images, true = (torch.stack(c) for c in zip(*(test[i] for i in range(min(args.edit_num, len(test))))))
        asked = torch.full_like(true, UNSPECIFIED)
        shift = torch.randint(1, k, (len(true),), generator=torch.Generator().manual_seed(args.seed))
        asked[:, a] = (true[:, a] + shift) % k  # always a different value than the input's
        attrs = asked if ldm.conditional or guide else None
        for mode, strength in itertools.product(args.edit_mode, args.edit_strength):
            edited = ldm.edit(images, attrs=attrs, strength=strength, mode=mode,
                              guidance_scale=s["guidance_scale"] if ldm.conditional else 1.0, sampler=s["sampler"],
                              steps=s["steps"], eta=None if mode == "invert" else s["eta"],  # invert: η = 0
                              generator=generator, **guide)
            predicted = judge.judge(edited)[1]
            rows.append({"asked": f"edit {schema.names[a]} {mode} s={strength:g}", "n": len(true),
                         f"acc {schema.names[a]}": float((predicted[:, a] == asked[:, a]).double().mean()),
                         **{f"kept {other}": float((predicted[:, b] == true[:, b]).double().mean())
                            for b, other in enumerate(schema.names) if b != a}})
    columns = ["asked", "n", "joint", *[f"acc {n}" for n in schema.names], *[f"spread {n}" for n in schema.names]]
    columns += [c for c in dict.fromkeys(k for row in rows for k in row) if c.startswith("kept ")]
    name = Path(args.run).name + ("_posthoc" if args.classifier else "") + (f"_{args.tag}" if args.tag else "")
    write_results(f"attribute_sampling_{name}", rows, columns,
                  extra={"run": args.run, "guidance": s["guidance_scale"], "sampler": s["sampler"], "steps": s["steps"],
                         "eta": s["eta"], "guidance_interval": s["guidance_interval"], "unasked": s["unasked"],
                         "judge_test_accuracy": record["test_accuracy"], **extra,
                         **({"edit_mode": args.edit_mode} if args.edit_strength else {})})


if __name__ == "__main__":
    main()
