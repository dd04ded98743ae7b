"""Typed run configs: dataclasses filled from a YAML recipe plus dotted command-line overrides.

One config file is one run. A recipe is a YAML mapping whose keys mirror the dataclass fields; a
command line adds ``key.sub=value`` overrides (values parsed as YAML, so ``train.steps=100`` is an
int and ``model.channel_mults=[1,2]`` a list). Everything is validated before any work starts:
an unknown key (with the closest valid name), a wrong type, a value out of range or a missing
file is one :class:`ConfigError` line naming the key; the scripts print it and exit with status 2.

One file per job, imported one way (parsing ← sections ← constraints ← reference):

- ``sections``: the typed dataclasses, one per section, and ``check(...)``, the field metadata of a key's own limits;
- ``parsing``: YAML, dotted overrides, coercion to the field types, the field limits, ``ConfigError``,
  ``load_config`` / ``from_dict`` / ``to_dict`` / ``dump_yaml``, and the registry (``@constraint``) of rules;
- ``constraints``: the rules between keys, each mirroring a constructor's check;
- ``reference``: docs/config.md, generated from the other three.

Adding a key: write the field in its section in ``sections.py`` (type, default, ``check(...)`` limits and a trailing
``# comment`` saying what it means) and regenerate docs/config.md with ``python docs/make_config_reference.py``.
Only when its valid values depend on another key, or a bound must exclude its end, add one ``@constraint`` rule in
``constraints.py`` next to its section's rules (and its case to tests/test_config_constraints.py's table). Parsing,
the checks of the field's own limits and the reference read the dataclasses: they need no change.
"""

from latentdiff.config.constraints import (
    DEFAULT_IMAGE_SIZES,
    ETA_SAMPLERS,
    POINT_DATASETS,
    RAE_REGULARISERS,
    ae_latent_shape,
)
from latentdiff.config.parsing import (
    CONSTRAINTS,
    ConfigError,
    Constraint,
    check_constraints,
    constraint,
    dump_yaml,
    from_dict,
    load_config,
    to_dict,
)
from latentdiff.config.reference import reference_markdown
from latentdiff.config.sections import (
    AELossConfig,
    AEModelConfig,
    AERefConfig,
    AERunConfig,
    ClassifierModelConfig,
    ClassifierRunConfig,
    ConditioningConfig,
    DataConfig,
    DenoiserConfig,
    DiffusionConfig,
    JointConfig,
    JointRunConfig,
    LatentConfig,
    LDMRunConfig,
    SampleConfig,
    StartConfig,
    TrainConfig,
    check,
)

__all__ = [
    # sections
    "DataConfig", "TrainConfig", "AEModelConfig", "AELossConfig", "AERunConfig", "DiffusionConfig", "DenoiserConfig",
    "AERefConfig", "LatentConfig", "ConditioningConfig", "SampleConfig", "LDMRunConfig", "ClassifierModelConfig",
    "ClassifierRunConfig", "StartConfig", "JointConfig", "JointRunConfig", "check",
    # parsing
    "ConfigError", "load_config", "from_dict", "to_dict", "dump_yaml",
    "Constraint", "CONSTRAINTS", "constraint", "check_constraints",
    # constraints
    "ETA_SAMPLERS", "RAE_REGULARISERS", "POINT_DATASETS", "DEFAULT_IMAGE_SIZES", "ae_latent_shape",
    # reference
    "reference_markdown",
]
