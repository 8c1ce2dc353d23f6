"""attnbench: compare attention modules in fixed vision backbones.

The notebook API: `build_module`, `build_model`, `measure_complexity`, and for a model of your own
`attach` (put a module into it at slots named by module-name patterns) and `custom_backbone`
(register it, so points and grids can name it); see docs/custom_backbones.md.
"""
from attnbench.backbones import build_model
from attnbench.backbones.custom import attach, custom_backbone
from attnbench.core.errors import ConfigError
from attnbench.measure.complexity import measure_complexity
from attnbench.modules import build_module

__all__ = ["ConfigError", "attach", "build_model", "build_module", "custom_backbone", "measure_complexity"]
__version__ = "0.1.0"
