"""Tasks by name: a plain dict of (task class, its config dataclass)."""

from rnnkit.tasks.charlm import CharLMConfig, CharLMTask
from rnnkit.tasks.classify import ClassifyConfig, ClassifyTask
from rnnkit.tasks.colors import ColorsConfig, ColorsTask
from rnnkit.tasks.dates import DatesConfig, DatesTask
from rnnkit.tasks.forecast import ForecastConfig, ForecastTask
from rnnkit.tasks.memory import MemoryConfig, MemoryTask
from rnnkit.tasks.music import MusicConfig, MusicTask
from rnnkit.tasks.tag import TagConfig, TagTask
from rnnkit.tasks.translate import TranslateConfig, TranslateTask

TASKS = {
    "charlm": (CharLMTask, CharLMConfig),
    "classify": (ClassifyTask, ClassifyConfig),
    "tag": (TagTask, TagConfig),
    "music": (MusicTask, MusicConfig),
    "forecast": (ForecastTask, ForecastConfig),
    "dates": (DatesTask, DatesConfig),
    "translate": (TranslateTask, TranslateConfig),
    "colors": (ColorsTask, ColorsConfig),
    "memory": (MemoryTask, MemoryConfig),
}
