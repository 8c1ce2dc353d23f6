"""Storage backends by URL scheme: each file here registers one (`@register_backend`); nothing else to edit.

Every registered backend runs the storage contract suite (tests/test_storage_contract.py).
"""
from __future__ import annotations

import importlib
import pkgutil

from attnbench.core.errors import ConfigError
from attnbench.store.backends.base import BACKENDS, Backend, register_backend
from attnbench.store.urls import redact

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")


def backend_for(url: str) -> Backend:
    """The backend whose scheme `url` uses; ConfigError naming the forms there are otherwise."""
    for backend in BACKENDS:
        if backend.claims(url):
            return backend
    forms = [backend.example for backend in sorted(BACKENDS, key=lambda b: b.order)]
    raise ConfigError("storage", redact(url), ", ".join(forms[:-1]) + ", or " + forms[-1])


__all__ = ["BACKENDS", "Backend", "backend_for", "register_backend"]
