"""The functions that build a user's model: `package.module:function` imported, `torchvision:NAME` and
`timm:NAME` looked up in their library, and calling one (errors naming the file's key)."""
from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from attnbench.backbones.custom.messages import _first_line
from attnbench.core.errors import ConfigError

LIBRARIES = ("torchvision", "timm")
_TARGET = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_LIBRARY_MODEL = re.compile(r"^[A-Za-z0-9_][\w.\-]*$")


def _import_factory(target: str, search_path: Sequence[str], key: str) -> Callable[..., Any]:
    if not isinstance(target, str) or not _TARGET.match(target):
        raise ConfigError(key, target, "`package.module:function`, a module importable from sys.path, the ablation "
                                       "file's folder or the current directory, and a function in it")
    module_name, _, attribute = target.partition(":")
    for folder in search_path:
        if folder not in sys.path:
            sys.path.append(folder)
    importlib.invalidate_caches()
    where = ", ".join(["sys.path", *search_path])
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and (module_name == error.name or module_name.startswith(error.name + ".")):
            raise ConfigError(key, target, f"an importable module: there is no module {error.name} (looked in "
                                           f"{where})") from None
        raise ConfigError(key, target, f"a module that imports: importing {module_name} raised "
                                       f"ModuleNotFoundError: {_first_line(error)}") from None
    except (Exception, SystemExit) as error:
        raise ConfigError(key, target, f"a module that imports: importing {module_name} raised "
                                       f"{type(error).__name__}: {_first_line(error)}") from None
    found: Any = module
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise ConfigError(key, target, f"a function of module {module_name}: it has no {attribute}")
        found = getattr(found, part)
    if not callable(found):
        raise ConfigError(key, target, f"a function (or class) that builds the model: {attribute} is a "
                                       f"{type(found).__name__}")
    return found


def _library_factory(library: str, model: str, key: str) -> Callable[..., Any]:
    try:
        package = importlib.import_module(library)
    except (Exception, SystemExit) as error:  # a build for another torch raises RuntimeError, not ImportError
        raise ConfigError(key, f"{library}:{model}", f"a library that imports here ({library}: "
                                                     f"{type(error).__name__}: {_first_line(error)})") from None
    if library == "torchvision":
        known = package.models.list_models()
        if model not in known:
            close = difflib.get_close_matches(model, known, n=5) or known[:5]
            raise ConfigError(key, f"{library}:{model}", "a torchvision model name, e.g. " + ", ".join(close))
        return functools.partial(package.models.get_model, model, weights=None)
    if not package.is_model(model):
        known = package.list_models()
        close = difflib.get_close_matches(model, known, n=5) or known[:5]
        raise ConfigError(key, f"{library}:{model}", "a timm model name, e.g. " + ", ".join(close))
    return functools.partial(package.create_model, model, pretrained=False)


def _call_factory(factory: Callable[..., Any], kwargs: dict[str, Any], spec: str, key: str,
                  kwargs_key: str | None = None) -> nn.Module:
    try:
        model = factory(**kwargs)
    except Exception as error:
        if kwargs_key and isinstance(error, TypeError) and "argument" in str(error):  # kwargs the factory does not take
            raise ConfigError(kwargs_key, kwargs, f"keyword arguments {spec} takes ({_first_line(error)})") from None
        raise ConfigError(key, spec, f"a factory that builds the model: calling it with {kwargs} raised "
                                     f"{type(error).__name__}: {_first_line(error)}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(key, spec, f"a function returning a torch.nn.Module (it returned a {type(model).__name__})")
    return model


def _takes(factory: Callable[..., Any], argument: str) -> bool:
    """Whether `factory` accepts keyword `argument` (True where its signature cannot be read)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == argument or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _split_spec(spec: Any, key: str) -> tuple[str, str]:
    """('torchvision' | 'timm', NAME) for a library model, ('factory', spec) otherwise."""
    if not isinstance(spec, str):
        raise ConfigError(key, spec, "`package.module:function`, `torchvision:NAME` or `timm:NAME`")
    library, _, model = spec.partition(":")
    if library in LIBRARIES:
        if not _LIBRARY_MODEL.match(model):
            raise ConfigError(key, spec, f"{library}:NAME with a model name of {library}")
        return library, model
    return "factory", spec
