"""Class vocabularies of the ISIC challenges, as data.

A vocabulary fixes the order of the classifier outputs and says which raw labels in a dataset
map to which class. Readers translate every raw label through a vocabulary, so a label that is
not in it is reported (never guessed or dropped).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from skinedge.errors import ConfigError, DataError


@dataclass(frozen=True)
class ClassVocabulary:
    """Ordered class codes, their long names and the raw labels that map onto them.

    Attributes:
        name: Registry key (``isic2018``, ``isic2019``, ``melanoma``).
        codes: Class codes in output order, e.g. ``("mel", "nv", ...)``.
        names: Human-readable name per code.
        aliases: Extra raw labels (lower case) accepted for a code, e.g. ``"ak" -> "akiec"``.
        positive: The class whose AUC/sensitivity is reported on its own (melanoma).
    """

    name: str
    codes: tuple[str, ...]
    names: dict[str, str]
    aliases: dict[str, str] = field(default_factory=dict)
    positive: str = "mel"

    @property
    def num_classes(self) -> int:
        return len(self.codes)

    def index(self, raw_label: str) -> int:
        """Class index of a raw label (case-insensitive, aliases allowed).

        Raises:
            KeyError: the label is not part of this vocabulary.
        """
        code = self.normalize(raw_label)
        if code is None:
            raise KeyError(raw_label)
        return self.codes.index(code)

    def normalize(self, raw_label: str) -> str | None:
        """The class code for a raw label, or None when the label is unknown."""
        label = str(raw_label).strip().lower()
        if label in self.codes:
            return label
        return self.aliases.get(label)


_LESION_NAMES = {
    "mel": "melanoma",
    "nv": "melanocytic nevus",
    "bcc": "basal cell carcinoma",
    "akiec": "actinic keratosis / intraepithelial carcinoma",
    "bkl": "benign keratosis",
    "df": "dermatofibroma",
    "vasc": "vascular lesion",
    "scc": "squamous cell carcinoma",
    "unk": "unknown / other",
}

VOCABULARIES: dict[str, ClassVocabulary] = {
    # HAM10000 / ISIC 2018 Task 3, column order of the official ground-truth CSV.
    "isic2018": ClassVocabulary(
        name="isic2018",
        codes=("mel", "nv", "bcc", "akiec", "bkl", "df", "vasc"),
        names={c: _LESION_NAMES[c] for c in ("mel", "nv", "bcc", "akiec", "bkl", "df", "vasc")},
        aliases={"ak": "akiec", "melanoma": "mel", "nevus": "nv"},
    ),
    # ISIC 2019: AK replaces AKIEC, SCC split out, UNK for the test set's unknown class.
    "isic2019": ClassVocabulary(
        name="isic2019",
        codes=("mel", "nv", "bcc", "ak", "bkl", "df", "vasc", "scc", "unk"),
        names={
            **{c: _LESION_NAMES[c] for c in ("mel", "nv", "bcc", "bkl", "df", "vasc", "scc")},
            "ak": "actinic keratosis",
            "unk": _LESION_NAMES["unk"],
        },
        aliases={"akiec": "ak", "melanoma": "mel", "nevus": "nv"},
    ),
    # ISIC 2020 and any melanoma-vs-rest task.
    "melanoma": ClassVocabulary(
        name="melanoma",
        codes=("benign", "mel"),
        names={"benign": "benign", "mel": "melanoma"},
        aliases={
            "0": "benign", "1": "mel", "malignant": "mel", "melanoma": "mel",
            **{c: "benign" for c in ("nv", "bkl", "df", "vasc", "nevus")},
        },
    ),
}


def get_vocabulary(name: str) -> ClassVocabulary:
    """Look up a vocabulary by name; the error lists the known ones."""
    try:
        return VOCABULARIES[name]
    except KeyError:
        known = ", ".join(sorted(VOCABULARIES))
        raise ConfigError(f"unknown class vocabulary {name!r}; choose one of: {known}") from None


def infer_vocabulary(raw_labels: set[str]) -> ClassVocabulary:
    """The smallest known vocabulary that covers every raw label.

    Raises:
        DataError: no vocabulary covers them; the message lists the labels that none knows.
    """
    for name in ("melanoma", "isic2018", "isic2019"):
        vocab = VOCABULARIES[name]
        if all(vocab.normalize(label) is not None for label in raw_labels):
            # A set of only benign-type codes with mel is a 7-class problem, not binary, unless
            # the labels themselves are binary (benign/mel, 0/1).
            if name == "melanoma" and not raw_labels <= {"benign", "mel", "melanoma", "0", "1",
                                                          "malignant"}:
                continue
            return vocab
    unknown = sorted(
        label for label in raw_labels
        if all(v.normalize(label) is None for v in VOCABULARIES.values())
    )
    raise DataError(
        f"labels {unknown} belong to no known class vocabulary "
        f"({', '.join(sorted(VOCABULARIES))}); fix the labels, or name the vocabulary when "
        "splitting (`skinedge data split --classes`)"
    )
