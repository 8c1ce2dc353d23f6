"""attnbench: compare attention modules in fixed vision backbones.

The notebook API: `build_module`, `build_model`, `measure_complexity`.
"""
from attnbench.backbones import build_model
from attnbench.errors import ConfigError
from attnbench.measure.complexity import measure_complexity
from attnbench.modules import build_module

__all__ = ["ConfigError", "build_model", "build_module", "measure_complexity"]
__version__ = "0.1.0"
