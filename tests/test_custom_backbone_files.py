"""Your own backbone in an ablation file: `factory:` and `torchvision:`/`timm:` entries, end to end through bench.py.

Each test writes its user package under a fresh, uniquely named folder (Python caches imported
modules by name, so two tests must never share one).
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pandas as pd
import pytest
import yaml

from attnbench import build_model, custom_backbone
from attnbench.backbones import attention_slots, get_backbone_entry
from attnbench.cli import main
from attnbench.config.ablation import load_ablation, parse_ablation

ROOT = Path(__file__).resolve().parents[1]

SMALL_CNN = '''
from torch import nn


class SmallCNN(nn.Module):
    def __init__(self, width=8, num_classes=5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def small_cnn(width=8, num_classes=5):
    return SmallCNN(width, num_classes)


def five_classes(width=8):
    return SmallCNN(width)


def not_a_model(width=8):
    return 42
'''


def user_package(folder: Path, source: str = SMALL_CNN) -> str:
    """A package `userpkg_<random>` with `models.py` under `folder`; its name."""
    name = f"userpkg_{uuid.uuid4().hex[:10]}"
    (folder / name).mkdir(parents=True)
    (folder / name / "__init__.py").write_text("")
    (folder / name / "models.py").write_text(textwrap.dedent(source))
    return name


def write(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def grid_file(folder: Path, package: str, **backbone: object) -> dict:
    entry = {"factory": f"{package}.models:small_cnn", "kwargs": {"width": 8}, "input_size": 16,
             "slots": {"after": ["features.[147]"], "replace": ["features.6"]}, **backbone}
    return {"name": "mine", "backbones": [entry],
            "variants": [{"module": "se", "grid": {"reduction": [4]}}, {"module": "dcn"}]}


# By hand, SmallCNN(width=8) at 16x16: convs 3->8 (16x16), 8->16 stride 2 (8x8), 16->16 (8x8), BNs, fc 16->5.
PARAMS = 3 * 8 * 9 + 16 + 8 * 16 * 9 + 32 + 16 * 16 * 9 + 32 + 16 * 5 + 5
MACS = 8 * 3 * 9 * 256 + 16 * 8 * 9 * 64 + 16 * 16 * 9 * 64 + 16 * 5
# se (r = 4) after the three BNs (8, 16, 16 channels): C -> C/4 -> C with biases; MACs 2 * C * C/4
SE_PARAMS = sum(2 * c * (c // 4) + c // 4 + c for c in (8, 16, 16))
SE_MACS = sum(2 * c * (c // 4) for c in (8, 16, 16))
# dcn (v2) replacing the 16->16 3x3 conv: its weight takes the conv's place; the offset-and-mask conv
# 16 -> 3*9 (3x3, bias) is what it adds, in parameters and in MACs at 8x8
DCN_PARAMS = 27 * 16 * 9 + 27
DCN_MACS = 27 * 16 * 9 * 64


def test_a_factory_in_an_ablation_file_runs_through_bench_py(tmp_path: Path) -> None:
    package = user_package(tmp_path)
    grid = write(tmp_path / "mine.yaml", grid_file(tmp_path, package))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    done = subprocess.run([sys.executable, str(ROOT / "bench.py"), "--grid", str(grid), "--results", "out"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = pd.read_csv(tmp_path / "out" / "mine" / "points.csv").set_index("attention")
    assert set(rows.index) == {"none", "se", "dcn"}
    assert rows["num_classes"].tolist() == [5, 5, 5]  # the model's own output width
    assert (rows.loc["none", "params"], rows.loc["none", "macs"]) == (PARAMS, MACS)
    assert (rows.loc["se", "params"], rows.loc["se", "macs"]) == (PARAMS + SE_PARAMS, MACS + SE_MACS)
    assert rows.loc["se", "attention_params"] == SE_PARAMS
    assert (rows.loc["dcn", "params"], rows.loc["dcn", "macs"]) == (PARAMS + DCN_PARAMS, MACS + DCN_MACS)
    assert rows.loc["dcn", "attention_params"] == DCN_PARAMS
    assert rows.loc["se", "by_slot/features.4.attention/macs"] == 2 * 16 * 4
    assert rows.loc["dcn", "by_slot/features.6/params"] == DCN_PARAMS
    assert (rows["cross_check_rel_diff"] == 0).all()
    backbone = rows.loc["none", "backbone"]
    assert backbone.startswith(f"custom:{package}.models:small_cnn-") and len(backbone.rsplit("-", 1)[1]) == 8
    assert "se(reduction=4)" in done.stdout and backbone in done.stdout


def test_the_entry_is_a_registered_backbone_with_patterns_as_stages(tmp_path: Path) -> None:
    package = user_package(tmp_path)
    data = grid_file(tmp_path, package)
    data["variants"] = [{"module": "se", "grid": {"reduction": [4]}, "stages": [1], "blocks": [-1]},
                        {"module": "eca", "backbones": [f"{package}.models:small_cnn"]}]
    ablation = parse_ablation(data, source=str(write(tmp_path / "mine.yaml", data)))
    name = ablation.points[0].backbone
    entry = get_backbone_entry(name)
    assert (entry.stages, entry.default_stages, entry.conv_stages, entry.positions) == ((1, 2), (1,), (2,), ("after",))
    assert {p.variant_label() for p in ablation.points} == {"none", "se(reduction=4)[blocks -1]", "eca"}
    again = parse_ablation(data, source=str(tmp_path / "mine.yaml"))
    assert [p.key for p in again.points] == [p.key for p in ablation.points]  # the name, hence the keys, are stable
    model = build_model(name, "se", reduction=4, blocks=[-1])
    assert list(attention_slots(model)) == ["features.7.attention"]
    other = dict(data, backbones=[dict(data["backbones"][0], kwargs={"width": 16})])
    assert parse_ablation(other, source=str(tmp_path / "mine.yaml")).points[0].backbone != name  # kwargs in the hash


def test_num_classes_from_the_file_goes_to_the_factory(tmp_path: Path) -> None:
    package = user_package(tmp_path)
    data = grid_file(tmp_path, package, num_classes=3)
    ablation = parse_ablation(data, source=str(write(tmp_path / "mine.yaml", data)))
    assert {p.num_classes for p in ablation.points} == {3}
    model = build_model(ablation.points[0].backbone, num_classes=3)
    assert model.classifier.out_features == 3


def test_workers_get_the_user_backbone_with_the_ablation(tmp_path: Path) -> None:
    """A --workers child is a spawned process that receives the parsed Ablation: unpickling registers its backbones."""
    package = user_package(tmp_path)
    ablation = load_ablation(write(tmp_path / "mine.yaml", grid_file(tmp_path, package)))
    (tmp_path / "ablation.pkl").write_bytes(pickle.dumps(ablation))
    child = textwrap.dedent(f"""
        import pickle, sys
        ablation = pickle.loads(open({str(tmp_path / 'ablation.pkl')!r}, 'rb').read())
        from attnbench.backbones import build_model
        point = [p for p in ablation.points if p.attention == 'dcn'][0]
        model = build_model(point.backbone, point.attention, stages=point.stages, num_classes=point.num_classes,
                            **point.hyperparameters)
        print(sum(p.numel() for p in model.parameters()))
    """)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([sys.executable, "-c", child], cwd=elsewhere, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) == PARAMS + DCN_PARAMS


def test_custom_backbone_from_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = user_package(tmp_path)
    monkeypatch.chdir(tmp_path)
    name = custom_backbone(f"{package}.models:small_cnn", after=["features.1", "features.4"], replace="features.6",
                           input_size=16)
    assert get_backbone_entry(name).stages == (1, 2, 3)
    assert list(attention_slots(build_model(name, "se", stages=[2], reduction=4))) == ["features.4.attention"]


BROKEN = "from torch import nn\nraise RuntimeError('no GPU here')\n"


def bad_cases(package: str, broken: str) -> dict[str, tuple[dict, str, str]]:
    """case -> (changes to the backbone entry, key in the message, needle)."""
    factory = f"{package}.models:small_cnn"
    return {
        "no such module": ({"factory": "nowhere_xyz.models:net"}, "backbones[0].factory=",
                           "there is no module nowhere_xyz (looked in sys.path,"),
        "no such function": ({"factory": f"{package}.models:big_cnn"}, "backbones[0].factory=", "it has no big_cnn"),
        "not a factory string": ({"factory": "models.small_cnn"}, "backbones[0].factory=", "package.module:function"),
        "module that raises": ({"factory": f"{broken}.models:net"}, "backbones[0].factory=",
                               "raised RuntimeError: no GPU here"),
        "not a module": ({"factory": f"{package}.models:not_a_model"}, "backbones[0].factory=",
                         "returning a torch.nn.Module (it returned a int)"),
        "bad kwargs": ({"factory": factory, "kwargs": {"depth": 3}}, "backbones[0].kwargs={'depth': 3}",
                       "unexpected keyword argument 'depth'"),
        "factory that fails": ({"factory": factory, "kwargs": {"width": -1}}, "backbones[0].factory=",
                               "calling it with {'width': -1} raised"),
        "pattern matching nothing": ({"slots": {"after": ["features.1", "layer*.bn3"]}}, "backbones[0].slots.after[1]=",
                                     "matches none"),
        "channels not found": ({"slots": {"after": ["classifier"]}}, "backbones[0].slots.after[0]=",
                               "(N, C, H, W) map: classifier has shape [1, 5]"),
        "replacing a BN": ({"slots": {"replace": ["features.1"]}}, "backbones[0].slots.replace[0]=",
                           "a BatchNorm2d"),
        "unknown slot key": ({"slots": {"before": ["features.1"]}}, "backbones[0].slots.before=", "after, replace"),
        "no slots": ({"slots": {}}, "backbones[0].slots=", "at least one pattern"),
        "bad input size": ({"input_size": 0}, "backbones[0].input_size=0", "a positive integer"),
        "factory and name": ({"name": "mine"}, "backbones[0].name=", "left out for a factory backbone"),
        "num_classes the factory cannot take": ({"factory": f"{package}.models:five_classes", "num_classes": 3},
                                                "backbones[0].num_classes=3", "takes no num_classes"),
        "stage that is no pattern": ({"variants": [{"module": "se", "stages": [3]}]}, "variants[0].stages=",
                                     "from [1, 2]"),
        "conv module without a replace pattern": ({"slots": {"after": ["features.1"]},
                                                   "variants": [{"module": "dcn"}]}, "variants[0].attention=", "gate"),
    }


def test_bad_user_backbones_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    package = user_package(tmp_path)
    broken = user_package(tmp_path, BROKEN)
    for case, (changes, key, needle) in bad_cases(package, broken).items():
        data = grid_file(tmp_path, package)
        variants = changes.pop("variants", None)
        data["backbones"][0].update(changes)
        if variants is not None:
            data["variants"] = variants
        grid = write(tmp_path / "bad.yaml", data)
        status = main(["--grid", str(grid), "--results", str(tmp_path / "out"), "--wandb", "disabled", "--quiet"])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert status == 2 and "Traceback" not in err and len(lines) == 1, (case, err)
        assert lines[0].startswith("bench.py: error: ") and key in lines[0] and needle in lines[0], (case, lines[0])


def _importable(name: str) -> str | None:
    try:
        __import__(name)
    except Exception as error:  # a build for another torch raises RuntimeError
        return f"{name} does not import here ({type(error).__name__}: {error})"
    return None


@pytest.mark.skipif(_importable("torchvision") is not None, reason=str(_importable("torchvision")))
def test_torchvision_model_by_name() -> None:
    data = {"name": "tv", "backbones": [{"name": "torchvision:resnet50", "slots": {"after": ["layer*.*.bn3"]}}],
            "variants": ["se"]}
    ablation = parse_ablation(data)
    point = [p for p in ablation.points if p.attention == "se"][0]
    model = build_model(point.backbone, "se")
    assert sum(p.numel() for p in model.parameters()) == 28_088_024


@pytest.mark.skipif(_importable("timm") is not None, reason=str(_importable("timm")))
def test_timm_model_by_name() -> None:
    data = {"name": "timm", "backbones": [{"name": "timm:resnet50", "slots": {"after": ["layer*.*.bn3"]}}],
            "variants": ["se"]}
    ablation = parse_ablation(data)
    point = [p for p in ablation.points if p.attention == "se"][0]
    assert sum(p.numel() for p in build_model(point.backbone, "se").parameters()) == 28_088_024


def test_a_library_that_does_not_import_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = [name for name in ("torchvision", "timm") if _importable(name) is not None]
    if not missing:
        pytest.skip("torchvision and timm both import here")
    data = {"name": "lib", "backbones": [{"name": f"{missing[0]}:resnet50", "slots": {"after": ["layer*.*.bn3"]}}],
            "variants": ["se"]}
    status = main(["--grid", str(write(tmp_path / "lib.yaml", data)), "--results", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1 and f"backbones[0].name='{missing[0]}:resnet50'" in err, err
    assert "a library that imports here" in err


def test_the_example_runs_as_written_from_the_repository_root(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    done = subprocess.run([sys.executable, "bench.py", "--grid", "examples/custom_backbone.yaml",
                           "--results", str(tmp_path / "out")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "custom:custom_backbone:small_resnet-" in done.stdout and "dcn" in done.stdout
