"""Contract tests over the registries: every module in every backbone family that accepts its kind, with no list to keep.

A module or backbone is covered the moment it is registered: each registered module, at its paper
defaults, in the smallest backbone of each family, at a small input, builds, runs forward and
backward, is counted with no uncounted op and a zero cross-check difference, derives a search space
from its declared hyperparameters, and is listed by `--list`. Values do not matter there, so models
are built on the meta device and given uninitialised memory (no init cost); one real, initialised
forward and backward per module checks its values are finite. A module may refuse a backbone (a
channel constraint, a conv that keeps its channels) but only at validation, with a ConfigError,
and never every backbone.
"""
from __future__ import annotations

import functools

import pytest
import torch

from attnbench.backbones import backbone_names, build_model, get_backbone_entry
from attnbench.cli import main
from attnbench.config.point import make_point
from attnbench.core.errors import ConfigError
from attnbench.measure.complexity import measure_complexity
from attnbench.modules import get_module_entry, module_names
from attnbench.modules.slots import attention_slots
from attnbench.run.measurements import build_point_model
from attnbench.search.space import Base, parse_space


@functools.cache
def _params(name: str) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(name, num_classes=10).parameters())


@functools.lru_cache(maxsize=1)
def representatives() -> dict[str, str]:
    """The smallest registered backbone of each family."""
    smallest: dict[str, tuple[int, str]] = {}
    for name in backbone_names():
        family, size = get_backbone_entry(name).family, _params(name)
        if family not in smallest or size < smallest[family][0]:
            smallest[family] = (size, name)
    return {family: name for family, (_, name) in smallest.items()}


def _pairs() -> list[tuple[str, str]]:
    return [(module, backbone) for module in module_names() if module != "none" for backbone in representatives().values()
            if get_module_entry(module).kind in get_backbone_entry(backbone).accepts]


def small_input(backbone: str) -> int:
    """Twice the backbone's smallest input: its last stage then has a 2x2 map, which every module takes."""
    return 2 * get_backbone_entry(backbone).min_input


@functools.cache
def _accepted(module: str, backbone: str) -> bool:
    try:
        make_point(backbone, module, input_size=small_input(backbone), num_classes=10)
    except ConfigError:
        return False
    return True


def _placed(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in attention_slots(model).values() if type(m).__name__ != "NoAttention"]


@pytest.mark.parametrize("module,backbone", _pairs())
def test_module_in_backbone_builds_runs_backward_and_counts(module: str, backbone: str) -> None:
    if not _accepted(module, backbone):
        pytest.skip(f"{module} refuses {backbone} at validation (a ConfigError, checked by the next test)")
    size = small_input(backbone)
    with torch.device("meta"):  # built from a point, as a grid builds it: every resolved hyperparameter passed
        model = build_point_model(make_point(backbone, module, input_size=size, num_classes=10))
    model = model.to_empty(device="cpu")  # memory without initialisation: counts and shapes need no values
    placed = _placed(model)
    assert placed, "the module went into at least one slot"
    result = measure_complexity(model, (1, 3, size, size))
    assert result.uncounted_ops == [], result.uncounted_ops
    assert result.cross_check_rel_diff == 0
    assert result.attention_params == sum({id(p): p.numel() for m in placed for p in getattr(
        m, "overhead_parameters", m.parameters)()}.values())
    model.train()
    out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 10)
    out.sum().backward()
    trainable = [p for m in placed for p in m.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in trainable), "every parameter of the module takes part in the backward"


@pytest.mark.parametrize("module", [m for m in module_names() if m != "none"])
def test_every_module_trains_to_finite_values_in_its_cheapest_backbone(module: str) -> None:
    backbone = min((b for m, b in _pairs() if m == module and _accepted(m, b)), key=_params)
    size = small_input(backbone)
    model = build_point_model(make_point(backbone, module, input_size=size, num_classes=10)).train()
    out = model(torch.randn(2, 3, size, size))
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for m in _placed(model) for p in m.parameters() if p.grad is not None)


@pytest.mark.parametrize("module", [m for m in module_names() if m != "none"])
def test_every_module_fits_some_backbone_and_refuses_others_with_one_error(module: str) -> None:
    accepted = [b for m, b in _pairs() if m == module and _accepted(m, b)]
    assert accepted, f"{module} at its paper defaults fits no backbone family"
    for m, backbone in _pairs():
        if m == module and backbone not in accepted:
            with pytest.raises(ConfigError):  # refused before building, never a traceback
                make_point(backbone, module, input_size=small_input(backbone), num_classes=10)


@pytest.mark.parametrize("module", module_names())
def test_every_module_derives_a_search_space(module: str) -> None:
    """Every declared hyperparameter becomes an Optuna distribution: finite kinds with all their values (`{}`),
    numeric ranges narrowed to the default (their ends are checked against the backbone's channels)."""
    backbone = next((b for m, b in _pairs() if m == module and _accepted(m, b)), "cifar_resnet20")
    entry = get_module_entry(module)
    base = Base(backbone, small_input(backbone), 1, 10)
    spec = {name: _narrowed(hp) for name, hp in entry.schema.params.items()}
    space = parse_space({"modules": {module: spec}}, base)
    assert set(name for name, _ in space.dimensions[module]) | set(space.fixed[module]) == set(spec)


def _narrowed(hp: object) -> object:
    from attnbench.modules.hparams import Float, Int

    if isinstance(hp, (Int, Float)) and getattr(hp, "none_means", None) is None:
        return {"low": hp.default, "high": hp.default}
    return {}


def test_list_names_every_module_and_backbone(capsys: pytest.CaptureFixture) -> None:
    assert main(["--list"]) == 0
    listed = capsys.readouterr().out
    for name in [*module_names(), *backbone_names()]:
        assert f"| {name} " in listed
    for name in module_names():
        entry = get_module_entry(name)
        assert name == "none" or entry.paper in listed
