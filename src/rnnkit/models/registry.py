"""Models by name, so a run directory can rebuild its model from JSON alone: a plain dict."""

from __future__ import annotations

from dataclasses import asdict, fields

from torch import nn

from rnnkit.errors import RnnkitValueError
from rnnkit.models.classifier import SequenceClassifier, SequenceClassifierConfig
from rnnkit.models.generator import VectorToSequence, VectorToSequenceConfig
from rnnkit.models.language_model import LanguageModel, LanguageModelConfig
from rnnkit.models.ntm import NTM, NTMConfig
from rnnkit.models.seq2seq import Seq2Seq, Seq2SeqConfig
from rnnkit.models.tagger import SequenceTagger, SequenceTaggerConfig

MODELS = {
    "LanguageModel": (LanguageModel, LanguageModelConfig),
    "SequenceTagger": (SequenceTagger, SequenceTaggerConfig),
    "SequenceClassifier": (SequenceClassifier, SequenceClassifierConfig),
    "VectorToSequence": (VectorToSequence, VectorToSequenceConfig),
    "Seq2Seq": (Seq2Seq, Seq2SeqConfig),
    "NTM": (NTM, NTMConfig),
}


def describe(model: nn.Module) -> dict:
    """{"class": name, "config": fields} for a model of the registry."""
    name = type(model).__name__
    if name not in MODELS:
        raise RnnkitValueError(f"model must be one of {', '.join(MODELS)}, got {name}")
    return {"class": name, "config": asdict(model.config)}


def build(description: dict) -> nn.Module:
    """The (untrained) model a `describe` output stands for."""
    try:
        cls, config_cls = MODELS[description["class"]]
        known = {f.name for f in fields(config_cls)}
        unknown = set(description["config"]) - known
        if unknown:
            raise RnnkitValueError(f"unknown {config_cls.__name__} fields: {sorted(unknown)}")
        return cls(config_cls(**description["config"]))
    except (KeyError, TypeError) as e:
        raise RnnkitValueError(
            f"not a model description (need class in {list(MODELS)} and config): {e}"
        ) from None
