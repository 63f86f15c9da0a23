"""Model topologies built on the library's recurrent layers."""

from rnnkit.models.classifier import SequenceClassifier, SequenceClassifierConfig
from rnnkit.models.generator import VectorToSequence, VectorToSequenceConfig
from rnnkit.models.language_model import LanguageModel, LanguageModelConfig
from rnnkit.models.tagger import SequenceTagger, SequenceTaggerConfig

__all__ = [
    "LanguageModel",
    "LanguageModelConfig",
    "SequenceClassifier",
    "SequenceClassifierConfig",
    "SequenceTagger",
    "SequenceTaggerConfig",
    "VectorToSequence",
    "VectorToSequenceConfig",
]
