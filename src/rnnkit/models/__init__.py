"""Model topologies built on the library's recurrent layers."""

from rnnkit.models.language_model import LanguageModel, LanguageModelConfig

__all__ = ["LanguageModel", "LanguageModelConfig"]
