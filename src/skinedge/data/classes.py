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


#: A partial label: the row is known *not* to be the positive class (ISIC 2020's "benign" says a
#: lesion is no melanoma, not which of the other classes it is). It names no class, so it is
#: never a class code; training scores it as ``-log(1 - p_mel)``
#: (:class:`~skinedge.train.losses.PartialLabelLoss`), evaluation as a melanoma-detection
#: negative.
NOT_POSITIVE_LABEL = "not-mel"
#: Its target index in a dataset (class targets are ``0 .. C-1``).
NOT_POSITIVE = -1

#: (from, into) -> label in ``from`` -> label in ``into`` (a class code, NOT_POSITIVE_LABEL, or
#: None: no class, the row cannot be used). Same-vocabulary pairs map every code to itself.
LABEL_MAPS: dict[tuple[str, str], dict[str, str | None]] = {
    # HAM's akiec is actinic keratosis *and* intraepithelial carcinoma (Bowen's disease, an SCC
    # in situ); an invasive SCC has no HAM class of its own and akiec is its nearest (a
    # judgement: such rows teach "keratinocyte lesion, not benign"). UNK names no class.
    ("isic2019", "isic2018"): {"mel": "mel", "nv": "nv", "bcc": "bcc", "ak": "akiec",
                               "bkl": "bkl", "df": "df", "vasc": "vasc", "scc": "akiec",
                               "unk": None},
    ("isic2018", "isic2019"): {"mel": "mel", "nv": "nv", "bcc": "bcc", "bkl": "bkl", "df": "df",
                               "vasc": "vasc", "akiec": None},  # akiec is ak or scc in situ
    ("melanoma", "isic2018"): {"mel": "mel", "benign": NOT_POSITIVE_LABEL},
    ("melanoma", "isic2019"): {"mel": "mel", "benign": NOT_POSITIVE_LABEL},
}


def map_label(label: str, source: str, target: str) -> str | None:
    """A ``source``-vocabulary class code in the ``target`` vocabulary: a class code,
    :data:`NOT_POSITIVE_LABEL` (a partial label), or None (no class there).

    Raises:
        ConfigError: no mapping between the two vocabularies; the message lists the known ones.
    """
    if label == NOT_POSITIVE_LABEL:  # a manifest's partial label, into any vocabulary with mel
        return label if get_vocabulary(target).positive in get_vocabulary(target).codes else None
    if source == target:
        return label if label in get_vocabulary(source).codes else None
    try:
        table = LABEL_MAPS[(source, target)]
    except KeyError:
        known = ", ".join(f"{a} -> {b}" for a, b in LABEL_MAPS)
        raise ConfigError(f"no mapping from the {source} classes into the {target} classes; "
                          f"known: {known}") from None
    return table.get(label)


def target_index(vocabulary: ClassVocabulary, label: str) -> int:
    """A manifest label's training target: its class index, or :data:`NOT_POSITIVE`.

    Raises:
        DataError: the label is neither a class of ``vocabulary`` nor a partial label it can
            take (a vocabulary without the positive class cannot take "not-mel").
    """
    if label in vocabulary.codes:
        return vocabulary.codes.index(label)
    if label == NOT_POSITIVE_LABEL and vocabulary.positive in vocabulary.codes:
        return NOT_POSITIVE
    raise DataError(f"label {label!r} is not one of the {vocabulary.name} classes "
                    f"({', '.join(vocabulary.codes)}) nor the partial label {NOT_POSITIVE_LABEL!r}")
