"""The measurements, one file each; every file of this package is imported, so a measurement registers itself."""
import importlib
import pkgutil

from attnbench.run.measurements.base import EpochCallback, Measurement, PointRun, Shared, build_point_model
from attnbench.run.measurements.registry import MEASUREMENTS, in_order, register_measurement

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
    importlib.import_module(f"{__name__}.{_info.name}")

__all__ = [
    "EpochCallback", "MEASUREMENTS", "Measurement", "PointRun", "Shared", "build_point_model", "in_order", "register_measurement",
]
