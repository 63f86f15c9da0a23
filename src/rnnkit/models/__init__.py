"""Model topologies built on the library's recurrent layers."""

from rnnkit.models.classifier import SequenceClassifier, SequenceClassifierConfig
from rnnkit.models.generator import VectorToSequence, VectorToSequenceConfig
from rnnkit.models.language_model import LanguageModel, LanguageModelConfig
from rnnkit.models.ntm import NTM, NTMConfig
from rnnkit.models.registry import MODELS, build, describe
from rnnkit.models.seq2seq import Seq2Seq, Seq2SeqConfig, exposure_gap, teacher_forcing_probability
from rnnkit.models.tagger import SequenceTagger, SequenceTaggerConfig

__all__ = [
    "MODELS",
    "NTM",
    "NTMConfig",
    "LanguageModel",
    "LanguageModelConfig",
    "Seq2Seq",
    "Seq2SeqConfig",
    "SequenceClassifier",
    "SequenceClassifierConfig",
    "SequenceTagger",
    "SequenceTaggerConfig",
    "VectorToSequence",
    "VectorToSequenceConfig",
    "build",
    "describe",
    "exposure_gap",
    "teacher_forcing_probability",
]
