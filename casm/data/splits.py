"""Class split files for unseen-class experiments (CASM paper 6.4, docs/unseen.md).

A split file divides a dataset's classes into disjoint named subsets (the paper: A-F holding 5, 5,
10, 30, 30 and 20 % of ImageNet's classes). Training selects subsets by name
(``data.split_file=... data.split_subsets=[C,D,E,F]``); evaluation scores every subset. The file
records the fingerprint of the dataset's full class list, so a split made for one dataset is never
applied to another (a renamed, added or removed class changes the fingerprint).

Format (JSON): ``{"format": "casm-class-split", "version": 1, "seed", "proportions": {name: p},
"dataset": {"name", "num_classes", "fingerprint"}, "subsets": {name: [class names]}}``.
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from casm.data.datasets import dataset_classes
from casm.errors import UserError

FORMAT = "casm-class-split"
VERSION = 1
PAPER_PROPORTIONS = (0.05, 0.05, 0.10, 0.30, 0.30, 0.20)  # A..F
PAPER_TRAINING_SETS = ("B-F", "C-F", "D-F", "E-F", "F")  # 95, 90, 80, 50 and 20 % of the classes


def fingerprint(classes: Sequence[str]) -> str:
    """SHA-256 of the class list in its canonical (the dataset's) order."""
    return hashlib.sha256("\n".join(classes).encode()).hexdigest()


def subset_names(count: int) -> list[str]:
    if not 1 <= count <= 26:
        raise UserError(f"a split needs 1 to 26 subsets, got {count}")
    return list(string.ascii_uppercase[:count])


@dataclass
class ClassSplit:
    subsets: dict[str, list[str]]  # name -> class names, in the dataset's order
    proportions: dict[str, float]
    seed: int
    dataset: dict  # name, num_classes, fingerprint
    path: Path | None = None  # where it was read from, for messages

    @property
    def names(self) -> list[str]:
        return list(self.subsets)

    def resolve(self, spec: str) -> list[str]:
        """Subset names from ``"C-F"`` (a range in the file's order), ``"B+D"`` or ``"F"``."""
        names = self.names
        if "-" in spec:
            first, last = spec.split("-", 1)
            self._known([first, last], spec)
            if names.index(first) > names.index(last):
                raise UserError(f"subset range {spec!r} runs backwards ({' '.join(names)})")
            return names[names.index(first): names.index(last) + 1]
        parts = spec.split("+")
        self._known(parts, spec)
        return parts

    def _known(self, parts: list[str], spec: str) -> None:
        unknown = [p for p in parts if p not in self.subsets]
        if unknown:
            raise UserError(f"{self.path or 'split'}: no subset {unknown[0]!r} in {spec!r}; "
                            f"subsets are {', '.join(self.names)}")

    def classes_of(self, subsets: Sequence[str], all_classes: Sequence[str]) -> list[str]:
        """The classes of ``subsets``, in the dataset's order."""
        self._known(list(subsets), ",".join(subsets))
        chosen = {c for s in subsets for c in self.subsets[s]}
        return [c for c in all_classes if c in chosen]

    def check_matches(self, all_classes: Sequence[str], data_name: str) -> None:
        """Refuse, with the reason, a split file made for another dataset."""
        where = self.path or "split file"
        if self.dataset["fingerprint"] == fingerprint(all_classes):
            return
        ours = set(all_classes)
        theirs = {c for names in self.subsets.values() for c in names}
        detail = (f"{len(theirs - ours)} of its classes are not in the data (e.g. {sorted(theirs - ours)[:3]}), "
                  f"{len(ours - theirs)} of the data's are not in it (e.g. {sorted(ours - theirs)[:3]})"
                  if ours != theirs else "the same class names in another order")
        raise UserError(f"{where} was made for a {self.dataset['name']} dataset with {self.dataset['num_classes']} "
                        f"classes, the data ({data_name}) has {len(all_classes)}: {detail}; write a split for "
                        f"this data with python -m casm split")

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "seed": self.seed, "proportions": self.proportions,
                "dataset": self.dataset, "subsets": self.subsets}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1))
        tmp.replace(path)  # never a half-written split file
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ClassSplit":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"split file not found: {path} (write one with python -m casm split)")
        try:
            raw = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserError(f"{path}: not a casm split file ({err})") from err
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise UserError(f"{path}: not a casm split file (no \"format\": \"{FORMAT}\")")
        if raw.get("version") != VERSION:
            raise UserError(f"{path}: split format version {raw.get('version')}, this casm reads {VERSION}")
        subsets = raw["subsets"]
        seen: dict[str, str] = {}
        for name, classes in subsets.items():
            for c in classes:
                if c in seen:
                    raise UserError(f"{path}: class {c!r} is in subsets {seen[c]} and {name}; "
                                    f"subsets must be disjoint")
                seen[c] = name
        return cls(subsets, raw["proportions"], raw["seed"], raw["dataset"], path)


def make_split(all_classes: Sequence[str], data_name: str, proportions: Sequence[float] = PAPER_PROPORTIONS,
               seed: int = 0) -> ClassSplit:
    """Shuffle the classes (seeded) and cut them into consecutive subsets of the given proportions.

    Counts follow the largest-remainder rule, so they add up to the number of classes exactly; every
    subset must get at least one class."""
    proportions = [float(p) for p in proportions]
    if any(p <= 0 for p in proportions):
        raise UserError(f"split proportions must be positive, got {proportions}")
    names = subset_names(len(proportions))
    total = sum(proportions)
    shares = np.array(proportions) / total * len(all_classes)
    counts = np.floor(shares).astype(int)
    for i in np.argsort(-(shares - counts), kind="stable")[: len(all_classes) - counts.sum()]:
        counts[i] += 1
    if (counts == 0).any():
        empty = [n for n, c in zip(names, counts) if c == 0]
        raise UserError(f"{len(all_classes)} classes are too few for proportions {proportions}: subset(s) "
                        f"{', '.join(empty)} would be empty")
    order = np.random.default_rng(seed).permutation(len(all_classes))
    position = {c: i for i, c in enumerate(all_classes)}
    subsets, start = {}, 0
    for name, count in zip(names, counts):
        members = [all_classes[i] for i in order[start: start + count]]
        subsets[name] = sorted(members, key=position.__getitem__)
        start += count
    return ClassSplit(subsets, {n: p / total for n, p in zip(names, proportions)}, seed,
                      {"name": data_name, "num_classes": len(all_classes), "fingerprint": fingerprint(all_classes)})


def class_selection(data) -> tuple[list[str] | None, list[str] | None]:
    """(include, exclude) for a ``data`` config: its split file's subsets, checked against the data,
    or its include/exclude lists."""
    if not data.split_file:
        return data.include_classes, data.exclude_classes
    split = ClassSplit.load(data.split_file)
    all_classes = dataset_classes(data)
    split.check_matches(all_classes, data.name)
    return split.classes_of(list(data.split_subsets), all_classes), None
