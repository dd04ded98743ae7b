"""The attribute schema of a dataset: ordered attribute names and, for each, its value names.

Labels are LongTensors of shape (num_attrs,): for attribute ``i`` a value index in
``0..num_values(i)-1``, or ``UNSPECIFIED = -1`` (the "no condition" value that classifier-free
guidance trains with, see ``latentdiff.conditioning``). A binary attribute (``values[i] is None``)
has index 0 for off and 1 for on.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

import torch

UNSPECIFIED = -1
_BINARY_WORDS = {"1": 1, "on": 1, "true": 1, "yes": 1, "0": 0, "off": 0, "false": 0, "no": 0}


def _closest(word: str, choices: list[str]) -> str:
    """ "did you mean 'x'? " for the closest choice (difflib), or "" when none is close."""
    close = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean {close[0]!r}? " if close else ""


@dataclass
class AttributeSchema:
    """Ordered attributes of a dataset.

    Args:
        names: attribute names, in the order of the columns of every label tensor.
        values: per attribute, its value names (categorical) or None (binary: 0 off, 1 on).
    """

    names: list[str] = field(default_factory=list)
    values: list[list[str] | None] = field(default_factory=list)

    def __post_init__(self):
        self.names = [str(n) for n in self.names]
        self.values = [None if v is None else [str(x) for x in v] for v in self.values]
        if len(self.names) != len(self.values):
            raise ValueError(f"AttributeSchema: {len(self.names)} names but {len(self.values)} value lists")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"AttributeSchema: attribute names repeat: {self.names}")
        for name, vals in zip(self.names, self.values):
            if vals is not None and (len(vals) < 1 or len(set(vals)) != len(vals)):
                raise ValueError(f"AttributeSchema: attribute {name!r} needs distinct value names, "
                                 f"got {vals}")

    def __len__(self) -> int:
        return len(self.names)

    def num_values(self, i: int) -> int:
        """How many values attribute ``i`` takes (2 for a binary attribute)."""
        return 2 if self.values[i] is None else len(self.values[i])

    def _position(self, name: str) -> int:
        if name not in self.names:
            valid = ", ".join(self.names) if self.names else "none (this dataset has no attributes)"
            raise ValueError(f"unknown attribute {name!r}; {_closest(name, self.names)}"
                             f"valid attributes: {valid}")
        return self.names.index(name)

    def value_names(self, i: int) -> list[str]:
        """The names of attribute ``i``'s values; a binary one reads ["0", "1"]."""
        return ["0", "1"] if self.values[i] is None else list(self.values[i])

    def index(self, name: str, value) -> int:
        """The value index of ``value`` for attribute ``name``.

        Binary attributes accept 0/1, true/false, on/off, yes/no (any case) or a Python bool/int.
        """
        i = self._position(name)
        vals = self.values[i]
        if vals is None:
            word = str(int(value)) if isinstance(value, (bool, int)) else str(value).strip().lower()
            if word not in _BINARY_WORDS:
                raise ValueError(f"attribute {name!r} is binary; give one of 0, 1, true, false, on, off "
                                 f"(got {value!r})")
            return _BINARY_WORDS[word]
        if str(value) not in vals:
            raise ValueError(f"unknown value {value!r} for attribute {name!r}; {_closest(str(value), vals)}"
                             f"valid values: {', '.join(vals)}")
        return vals.index(str(value))

    def parse(self, attrs: dict) -> torch.Tensor:
        """``{"color": "red", ...}`` -> LongTensor (num_attrs,); UNSPECIFIED for attributes not given."""
        row = torch.full((len(self.names),), UNSPECIFIED, dtype=torch.long)
        for name, value in attrs.items():
            row[self._position(name)] = self.index(name, value)
        return row

    def describe(self, attrs) -> str:
        """Human text for one label row, e.g. "red large triangle".

        Categorical values read as their names, in schema order; binary attributes appear by name when
        on ("smiling") and as "no <name>" when off; unspecified attributes are left out.
        """
        attrs = torch.as_tensor(attrs).reshape(-1).tolist()
        if len(attrs) != len(self.names):
            raise ValueError(f"describe: expected {len(self.names)} attribute values, got {len(attrs)}")
        words = []
        for name, vals, a in zip(self.names, self.values, attrs):
            if a == UNSPECIFIED:
                continue
            if vals is None:
                words.append(name if a == 1 else f"no {name}")
            else:
                words.append(vals[a])
        return " ".join(words) if words else "unconditional"

    def to_dict(self) -> dict:
        """Plain lists and strings, safe for ``torch.load(weights_only=True)`` checkpoints."""
        return {"names": list(self.names), "values": [None if v is None else list(v) for v in self.values]}

    @classmethod
    def from_dict(cls, d: dict) -> AttributeSchema:
        if not isinstance(d, dict) or "names" not in d or "values" not in d:
            raise ValueError("AttributeSchema.from_dict: expected a dict with 'names' and 'values'")
        return cls(list(d["names"]), list(d["values"]))
