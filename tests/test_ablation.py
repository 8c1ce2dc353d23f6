"""Ablation files: expansion into points, the baseline joining by itself, stable keys, and bad input."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from attnbench import ConfigError
from attnbench.config.ablation import load_ablation, parse_ablation
from attnbench.config.point import Point, make_point

ROOT = Path(__file__).resolve().parents[1]


def test_default_grid_has_every_module_and_ablation() -> None:
    ablation = load_ablation(ROOT / "ablations" / "default.yaml")
    labels = {(p.backbone, p.variant_label()) for p in ablation.points}
    for backbone in ("cifar_resnet18", "resnet50"):
        expected = {
            "none", "se", "se(reduction=4)", "se(reduction=8)", "se(reduction=32)", "se[pre]", "se[post]", "se[identity]",
            "cbam", "cbam(spatial_kernel=3)", "cbam(pool_types=avg)", "cbam(pool_types=max)",
            "eca", "eca(kernel_size=3)", "lka", "lka(kernel_size=7, dilation=2)", "lka(kernel_size=14)",
            "lka(kernel_size=28, dilation=4)", "lka(drop_dw=true)", "lka(combine=add)", "lka(sigmoid=true)",
            "msca", "msca(scales=7)", "msca(scales=11/21)", "dcn", "dcn(modulated=false)",
        }
        assert {(backbone, label) for label in expected} <= labels
    inputs = {(p.backbone, p.input_size) for p in ablation.points}
    assert inputs == {("cifar_resnet18", 32), ("resnet50", 224)}
    dcn = [p for p in ablation.points if p.attention == "dcn"]
    assert all(p.stages == (3, 4, 5) for p in dcn)


def test_products_explicit_lists_axes_and_baseline() -> None:
    ablation = parse_ablation({
        "name": "t", "backbones": [{"name": "cifar_resnet18", "input_size": 32, "num_classes": 10}],
        "batch_sizes": [1, 8],
        "variants": [
            {"module": "se", "grid": {"reduction": [4, 8], "gate": ["sigmoid", "hard_sigmoid"]}},
            {"module": "lka", "variants": [{"kernel_size": 7, "dilation": 2}, {"kernel_size": 21}]},
            {"module": "eca", "stages": [[2], [4, 5]], "position": ["standard", "post"]},
        ],
    })
    by_module: dict[str, int] = {}
    for point in ablation.points:
        by_module[point.attention] = by_module.get(point.attention, 0) + 1
    assert by_module == {"none": 2, "se": 2 * 2 * 2, "lka": 2 * 2, "eca": 2 * 2 * 2}


KEY_OF_RESNET18_SE = "a624daa4487687c9"  # key version 2; version 1 gave 5771925e1d47d526 (see test_point_keys.py)


def test_duplicate_points_collapse_and_keys_are_stable() -> None:
    a = make_point("resnet18", "se", {"reduction": 16})
    b = make_point("resnet18", "se", {})
    assert a == b and a.key == b.key
    assert make_point("resnet18", "se", {"reduction": 8}).key != a.key
    assert Point.from_dict(a.to_dict()) == a
    # Stores made by earlier versions must still resume: the key derivation may not drift (and when it
    # must, stored trials are re-keyed from their stored points: tests/test_point_keys.py).
    assert a.key == KEY_OF_RESNET18_SE


def _error(data: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_ablation(data)
    return info.value


BASE = {"name": "t", "backbones": ["resnet18"], "variants": [{"module": "se"}]}


@pytest.mark.parametrize("patch,key,value", [
    ({"variants": [{"module": "sse"}]}, "variants[0].attention", "sse"),
    ({"backbones": ["resnet19"]}, "backbones[0].backbone", "resnet19"),
    ({"variants": [{"module": "se", "grid": {"ratio": [2]}}]}, "variants[0].ratio", 2),
    ({"variants": [{"module": "cbam", "grid": {"spatial_kernel": [4]}}]}, "variants[0].spatial_kernel", 4),
    ({"variants": [{"module": "se", "grid": {"reduction": [128]}}]}, "variants[0].reduction", 128),
    ({"variants": [{"module": "se", "stages": [6]}]}, "variants[0].stages", 6),
    ({"variants": [{"module": "se", "position": "inside"}]}, "variants[0].position", "inside"),
    ({"variants": [{"module": "se", "colour": 1}]}, "variants[0].colour", 1),
    ({"backbones": [{"name": "resnet18", "input_size": 16}]}, "backbones[0].input_size", 16),
    ({"batch_sizes": [0]}, "batch_sizes", [0]),
    ({"dtypes": ["fp8"]}, "dtypes", ["fp8"]),
    ({"channels_last": [1]}, "channels_last", [1]),
    ({"extra": 1}, "extra", 1),
    ({"name": "a/b"}, "name", "a/b"),
    ({"variants": []}, "variants", []),
])
def test_bad_files_name_the_key_and_value(patch: dict, key: str, value: object) -> None:
    error = _error({**BASE, **patch})
    assert (error.key, error.value) == (key, value)
    assert str(error).count("\n") == 0 and key in str(error) and "allowed" in str(error)


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: t\nvariants: [ {module: se\n")
    with pytest.raises(ConfigError) as info:
        load_ablation(path)
    assert info.value.key == "ablation file" and "line" in info.value.allowed
    with pytest.raises(ConfigError):
        load_ablation(tmp_path / "missing.yaml")
    path.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError):
        load_ablation(path)
