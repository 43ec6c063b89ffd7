"""mixmatch_core: a paper-faithful MixMatch trainer (and supervised baseline) on any torch device.

Owns nothing itself; it exposes the library's entry points. The trainer knows nothing of
sweeps: `sweeps/` builds Configs and calls `train`.
"""

from .config import Config, ConfigError, VARIANTS, load_config, resolve

__all__ = ["Config", "ConfigError", "VARIANTS", "load_config", "resolve", "train"]
__version__ = "0.1.0"


def train(*args, **kwargs):
    """Lazy alias of `mixmatch_core.train.train` (keeps `import mixmatch_core` light)."""
    from .train import train as _train   # lazy: `import mixmatch_core` must not import torch
    return _train(*args, **kwargs)
