"""Typed run configs (being split into one file per job; see the next commit)."""

from latentdiff.config.sections import *  # noqa: F403
from latentdiff.config.sections import _dotted_keys, _field_comments  # noqa: F401
