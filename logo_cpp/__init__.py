"""logo-cpp: many LoRA adapters per input on local hardware (LoGo routing and mixtures on ggml)."""

from . import _build_config
from ._libs import preload as _preload

_preload(_build_config.LINKED_AGAINST)

from ._core import ConcurrentUseError, ContextOverflowError, FormatError, available_devices  # noqa: E402
from ._core import calibration_prompts  # noqa: E402
from .model import Completion, Model, Timings  # noqa: E402
from .adapters import AdapterPool  # noqa: E402
from .router import ROUTERS, Arrow, Fixed, LoGo, RandomK, Router, Routing, TopOne, Uniform  # noqa: E402

__version__ = _build_config.VERSION

__all__ = [
    "AdapterPool",
    "Arrow",
    "Fixed",
    "LoGo",
    "ROUTERS",
    "RandomK",
    "Router",
    "Routing",
    "TopOne",
    "Uniform",
    "Completion",
    "ConcurrentUseError",
    "ContextOverflowError",
    "FormatError",
    "Model",
    "Timings",
    "available_devices",
    "calibration_prompts",
]
