"""The ground floor: the two spectra, the retrieval features' names and one dataset image. Every layer may import this; it imports nothing of the project but errors.

``Modality`` is the only place the 0/1 tensor code of a spectrum is defined.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from mclnet_cli.errors import DataError


#: the retrieval features a model embeds (``MCLNet.embed_all``) and an index may store: BNNeck(f4) and pooled f4
FEATURES = ("bn", "pool")


class Modality(str, enum.Enum):
    """The two spectra. ``Modality.parse`` accepts the usual aliases."""

    VISIBLE = "visible"
    INFRARED = "infrared"

    @classmethod
    def parse(cls, value: "str | Modality") -> "Modality":
        if isinstance(value, Modality):
            return value
        key = str(value).strip().lower()
        for modality, aliases in _ALIASES.items():
            if key in aliases:
                return modality
        raise DataError(f"unknown modality {value!r}; expected {cls.accepted()}")

    @classmethod
    def accepted(cls) -> str:
        """Every accepted word, as messages say it: ``visible (rgb, vis, v) or infrared (thermal, nir, ir, t)``."""
        words = cls.words()  # each modality's name first, then its aliases
        return " or ".join(
            f"{m.value} ({', '.join(w for w in words if w in _ALIASES[m] and w != m.value)})" for m in cls
        )

    @classmethod
    def words(cls) -> tuple[str, ...]:
        """Every word :meth:`parse` accepts, visible's first (for messages and documentation)."""
        return tuple(word for modality in cls for word in sorted(_ALIASES[modality], key=lambda w: (w != modality.value, -len(w), w)))

    @property
    def index(self) -> int:
        """0 for visible, 1 for infrared (used in tensors)."""
        return 0 if self is Modality.VISIBLE else 1

    def other(self) -> "Modality":
        return Modality.INFRARED if self is Modality.VISIBLE else Modality.VISIBLE

    def __str__(self) -> str:  # plain value in f-strings and tables
        return self.value


_ALIASES = {
    Modality.VISIBLE: {"visible", "vis", "rgb", "v"},
    Modality.INFRARED: {"infrared", "ir", "nir", "thermal", "t"},
}


@dataclass(frozen=True)
class Sample:
    """One image of a dataset: absolute path, person id, camera, modality, split."""

    path: str
    pid: int
    cam: int
    modality: Modality
    split: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "pid": self.pid, "cam": self.cam, "modality": self.modality.value, "split": self.split}

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> "Sample":
        return cls(str(row["path"]), int(row["pid"]), int(row["cam"]), Modality.parse(row["modality"]), str(row["split"]))
