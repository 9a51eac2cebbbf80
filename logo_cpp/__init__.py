"""logo-cpp: many LoRA adapters per input on local hardware (LoGo routing and mixtures on ggml)."""

try:
    from . import _build_config
except ImportError as _exc:  # a source checkout on sys.path shadows the installed package
    import os as _os

    raise ImportError(
        f"logo_cpp was imported from {_os.path.dirname(__file__)}, a source tree without the built extension "
        "(it shadows the installed package when Python runs from the checkout's root): run Python from another "
        "directory, or install the checkout in place with `pip install -e .`") from _exc
from ._libs import preload as _preload

_preload(_build_config.LINKED_AGAINST)

from ._core import ConcurrentUseError, ContextOverflowError, FormatError, available_devices  # noqa: E402
from ._core import calibration_prompts  # noqa: E402
from ._closing import ClosedError  # noqa: E402
from .model import Completion, Model, Timings, TokenLogprob  # noqa: E402
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
    "ClosedError",
    "Completion",
    "ConcurrentUseError",
    "ContextOverflowError",
    "FormatError",
    "Model",
    "Timings",
    "TokenLogprob",
    "available_devices",
    "calibration_prompts",
]
