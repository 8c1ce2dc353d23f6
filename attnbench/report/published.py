"""Published parameter and MAC counts of the backbones, and the harness's own counts beside them.

A published figure is kept exactly as printed (a count, or millions / billions as a decimal
string), so "agrees" means: the measured value rounds to the printed one at the printed
precision. All MACs are at 224x224, batch 1, 1000 classes; the tables these come from call
them FLOPs or GFLOPs but count one multiply-accumulate as one (torchvision's docs, the VAN paper).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, TypedDict

import pandas as pd

from attnbench.backbones import build_model
from attnbench.config.point import make_point
from attnbench.report.common import si

INPUT_SIZE = 224
NUM_CLASSES = 1000
# Short source keys used in the table, and what they cite.
SOURCES = {
    "torchvision": "torchvision model docs, ResNet weights tables: Params, and the GFLOPS column (which counts MACs)",
    "SE": "Hu et al., Squeeze-and-Excitation Networks, arXiv 1709.01507 (SE-ResNet-50 28.1 M; Sec. 4: ~2.5 M extra parameters)",
    "CBAM": "Woo et al., CBAM: Convolutional Block Attention Module, arXiv 1807.06521 (ResNet-50 + CBAM 28.09 M)",
    "VAN": "Guo et al., Visual Attention Network, arXiv 2202.09741, and the official VAN-Classification README",
    "VAN T6": "Guo et al., Visual Attention Network, arXiv 2202.09741, Table 6 (VAN-B0 with LKA (K, d))",
    "SegNeXt": "Guo et al., SegNeXt, arXiv 2209.08575, ImageNet-1K comparison with MiT and VAN (classifier head included)",
    "SE T2": "Hu et al., Squeeze-and-Excitation Networks, arXiv 1709.01507, Table 2 (Caffe ResNet-50 3.86, SE-ResNet-50 3.87 "
             "GFLOPs, the squeeze and the scaling counted)",
    "ECA": "BangguWu/ECANet README model zoo: eca_resnet50_k3557 (k = 3, 5, 5, 7 by stage); the count is that "
           "configuration's ECA parameters (80) on torchvision's ResNet-50",
    "ResNeSt": "zhanghang1989/ResNeSt, resnest50 built from the official resnest/torch code (27.5 M, 5.39 GFLOPs in the paper)",
    "SKNet": "implus/SKNet sknet50.prototxt, counted layer by layer (27.5 M, 4.47 GFLOPs in the paper's Table 1)",
    "BoTNet": "the authors' BoTNet gist (aravindsrinivas), BoT50 = ResNet-50 with MHSA in c5, counted (20.8 M in the paper)",
    "BAM": "Park et al., BAM, arXiv 1807.06514, ImageNet table (ResNet-50 + BAM 25.92 M)",
}
CAFFE_RESNET = ("the paper's GFLOPs (3.87) are for the original Caffe ResNet-50 with the stride in the first 1x1 conv "
                "(3.86 there); torchvision puts it in the 3x3, so only parameters are compared here; the Caffe "
                "layout rows (resnet50_caffe) compare the GFLOPs")
SQUEEZE_SCALE = ("MACs here are the dense MACs plus the SE blocks' own element-wise work (the squeeze's pooling, the "
                 "sigmoid and the scaling), which the SE paper's 3.87 counts: 3.8605 G dense alone")


# counts a model's MACs at 224x224; the flag adds the attention modules' element-wise work (see complexity_macs)
MacsCounter = Callable[[Any, bool], int]


class Measured(TypedDict):
    """What the harness counts for one model: its parameters, and its MACs where they were counted."""

    params: float
    macs: float | None


@dataclass(frozen=True)
class Published:
    """A model the harness builds, with its published params (exact int, or millions as printed) and MACs (G, as printed)."""

    model: str
    backbone: str
    attention: str = "none"
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    params: int | str | None = None
    macs_g: str | None = None
    source: str = ""
    note: str = ""
    minus: str | None = None  # compare the difference to this other entry (by model name), e.g. an added block
    attention_elementwise: bool = False  # the published MACs also count the modules' element-wise work (SE paper)

    def build(self) -> Any:
        """The model, freshly built (validated like any point)."""
        make_point(self.backbone, self.attention, dict(self.hyperparameters), input_size=INPUT_SIZE, num_classes=NUM_CLASSES)
        return build_model(self.backbone, self.attention, num_classes=NUM_CLASSES, **self.hyperparameters)


PUBLISHED: tuple[Published, ...] = (
    Published("ResNet-18", "resnet18", params=11_689_512, macs_g="1.814", source="torchvision"),
    Published("ResNet-34", "resnet34", params=21_797_672, macs_g="3.664", source="torchvision"),
    Published("ResNet-50", "resnet50", params=25_557_032, macs_g="4.089", source="torchvision"),
    Published("ResNet-101", "resnet101", params=44_549_160, macs_g="7.801", source="torchvision"),
    Published("ResNet-152", "resnet152", params=60_192_808, macs_g="11.514", source="torchvision"),
    Published("SE-ResNet-50 (r=16)", "resnet50", "se", params="28.1", source="SE", note=CAFFE_RESNET),
    Published("SE-ResNet-50 minus ResNet-50", "resnet50", "se", params="2.5", minus="ResNet-50", source="SE"),
    Published("CBAM-ResNet-50", "resnet50", "cbam", params="28.09", source="CBAM",
              note="the paper's GFLOPs (its plain ResNet-50 at about 3.86 G) are for the original layout with the "
                   "stride in the first 1x1 conv, not torchvision's (4.089 G), so only parameters are compared"),
    Published("VAN-B0", "van_b0", "lka", params="4.1", macs_g="0.9", source="VAN"),
    Published("VAN-B1", "van_b1", "lka", params="13.9", macs_g="2.5", source="VAN"),
    Published("VAN-B2", "van_b2", "lka", params="26.6", macs_g="5.0", source="VAN"),
    Published("VAN-B3", "van_b3", "lka", params="44.8", macs_g="9.0", source="VAN",
              note="the paper does not name its counter; ours counts dense MACs only, while counters that add "
                   "bias, norm and activation ops (mmcv's, ptflops) report more"),
    *(Published(f"VAN-B0, LKA (K={k}, d={d})", "van_b0", "lka", {"kernel_size": k, "dilation": d}, params=p, source="VAN T6")
      for k, d, p in ((7, 2, "4.03"), (14, 3, "4.07"), (21, 3, "4.11"), (28, 4, "4.14"))),
    Published("MSCAN-T", "mscan_t", "msca", params="4.2", source="SegNeXt"),
    Published("MSCAN-S", "mscan_s", "msca", params="14.0", source="SegNeXt"),
    Published("MSCAN-B", "mscan_b", "msca", params="26.8", source="SegNeXt"),
    Published("MSCAN-L", "mscan_l", "msca", params="45.2", source="SegNeXt",
              note="45.15 M at two decimals; 45.2 only if that is rounded again, half up"),
    Published("ResNet-50, Caffe layout", "resnet50_caffe", params="25.6", macs_g="3.86", source="SE T2"),
    Published("SE-ResNet-50, Caffe layout", "resnet50_caffe", "se", params="28.1", macs_g="3.87", source="SE T2",
              attention_elementwise=True, note=SQUEEZE_SCALE),
    Published("ECA-ResNet-50 (k 3,5,5,7)", "resnet50", "eca", {"kernel_size": "k3557"}, params=25_557_112, source="ECA"),
    Published("MobileNetV2", "mobilenet_v2", params=3_504_872, macs_g="0.30", source="torchvision"),
    Published("BAM-ResNet-50", "resnet50", "bam", params="25.92", source="BAM"),
    Published("ResNeSt-50", "resnet50_d", "splat", params=27_483_240, macs_g="5.37", source="ResNeSt",
              note="the count and the dense MACs of the official resnest50; the paper prints 27.5 M and 5.39 GFLOPs"),
    Published("SKNet-50", "resnext50_32x4d", "sk", params=27_479_784, macs_g="4.46", source="SKNet",
              note="the count and the dense MACs of the official prototxt; the paper prints 27.5 M and 4.47 GFLOPs"),
    Published("BoT50", "resnet50", "mhsa", params=20_852_008, macs_g="4.02", source="BoTNet",
              note="the count of the authors' code (its c1-c4 are torchvision's); the paper prints 20.8 M"),
)


def rounds_to(measured: float, printed: str, unit: float) -> bool:
    """Whether `measured` / `unit` rounds (half up) to the printed decimal at its precision."""
    places = Decimal(printed)
    return (Decimal(measured) / Decimal(unit)).quantize(places, rounding=ROUND_HALF_UP) == places


def agrees(measured: float, published: int | str, unit: float) -> bool:
    """Exact equality for an exact published count, rounding agreement for a printed decimal."""
    return measured == published if isinstance(published, int) else rounds_to(measured, published, unit)


def difference(measured: float, published: int | str, unit: float) -> str:
    """Measured minus published, as a signed count with an SI prefix (a printed figure is taken at face value)."""
    return si(measured - (published if isinstance(published, int) else float(Decimal(published) * Decimal(unit))))


def count_params(model: Any) -> int:
    """Elements of the model's distinct parameters (no forward needed)."""
    return sum({id(p): p.numel() for p in model.parameters()}.values())


def measure(entry: Published, macs: MacsCounter | None) -> Measured:
    """Measured params (and MACs when the entry publishes them and `macs` is given) of one entry's model."""
    model = entry.build()
    return {"params": count_params(model),
            "macs": macs(model, entry.attention_elementwise) if (entry.macs_g is not None and macs is not None) else None}


def complexity_macs(model: Any, attention_elementwise: bool = False) -> int:
    """MACs at 224x224, batch 1, through the harness's counter (no FlopCounterMode cross-check: same number, twice the time).

    With `attention_elementwise`, the slot modules' element-wise FLOPs are added, as the SE paper counts them.
    """
    from attnbench.measure.complexity import measure_complexity

    result = measure_complexity(model, (1, 3, INPUT_SIZE, INPUT_SIZE), cross_check=False)
    extra = sum(slot["elementwise_flops"] for slot in result.by_slot.values()) if attention_elementwise else 0
    return result.macs + extra


def compare(entry: Published, measured: Measured) -> dict[str, Any]:
    """One reproduction row: measured beside published, the difference, and whether they agree."""
    row: dict[str, Any] = {"model": entry.model}
    if entry.params is not None:
        published = f"{entry.params:,}" if isinstance(entry.params, int) else f"{entry.params} M"
        row.update({"params": f"{measured['params']:,.0f}", "published params": published,
                    "Δ params": difference(measured["params"], entry.params, 1e6),
                    "params ok": "✓" if agrees(measured["params"], entry.params, 1e6) else "✗"})
    macs = measured.get("macs")
    if entry.macs_g is not None and macs is not None:
        row.update({"MACs (G)": f"{macs / 1e9:.4f}", "published MACs (G)": entry.macs_g,
                    "Δ MACs": difference(macs, entry.macs_g, 1e9),
                    "MACs ok": "✓" if rounds_to(macs, entry.macs_g, 1e9) else "✗"})
    row["source"] = entry.source
    return row


def reproduce(entries: tuple[Published, ...] = PUBLISHED, macs: MacsCounter | None = complexity_macs) -> pd.DataFrame:
    """Build every entry's model, measure it, and put it beside the published figures (differences use `minus`)."""
    measured: dict[str, Measured] = {}
    rows = []
    for entry in entries:
        measured[entry.model] = values = measure(entry, macs)
        if entry.minus is not None:
            reference = measured.get(entry.minus) or measure(next(e for e in entries if e.model == entry.minus), macs)
            mine, theirs = values["macs"], reference["macs"]
            values = {"params": values["params"] - reference["params"],
                      "macs": None if mine is None or theirs is None else mine - theirs}
        rows.append(compare(entry, values))
    return pd.DataFrame(rows).fillna("")


def published_matches(frame: pd.DataFrame, entries: tuple[Published, ...] = PUBLISHED) -> pd.DataFrame:
    """Reproduction rows for the study's completed points that are published models (224x224, 1000 classes, defaults)."""
    if frame.empty or "params" not in frame:
        return pd.DataFrame()
    done = frame[frame["state"] == "COMPLETE"] if "state" in frame else frame
    by_key = {}
    for entry in entries:
        if entry.minus is None:
            point = make_point(entry.backbone, entry.attention, dict(entry.hyperparameters),
                               input_size=INPUT_SIZE, num_classes=NUM_CLASSES)
            by_key[_identity(point.to_dict())] = entry
    rows = []
    for _, row in done.iterrows():
        identity = _identity({"backbone": row["backbone"], "attention": row["attention"],
                              "hyperparameters": row.get("point_hyperparameters") or {},
                              "stages": row["stages"], "position": row["position"],
                              "input_size": row["input_size"], "num_classes": row["num_classes"]})
        if (match := by_key.get(identity)) is not None:
            macs = row.get("macs")
            per_image = None if macs is None or pd.isna(macs) else float(macs) / int(row["batch_size"])
            rows.append(compare(match, {"params": float(row["params"]), "macs": per_image}))
    return pd.DataFrame(rows).fillna("") if rows else pd.DataFrame()


def _identity(point: dict[str, Any]) -> str:
    """Everything that defines a point but the batch size (params and per-image MACs do not depend on it)."""
    keys = ("backbone", "attention", "hyperparameters", "stages", "position", "input_size", "num_classes")
    normal = {k: point[k] for k in keys}
    normal["stages"] = list(normal["stages"])
    normal["hyperparameters"] = {k: list(v) if isinstance(v, tuple) else v for k, v in dict(normal["hyperparameters"]).items()}
    return repr(sorted(normal.items()))


def sources_markdown(table: pd.DataFrame, entries: tuple[Published, ...] = PUBLISHED) -> str:
    """The sources cited in `table` and the notes on its rows, as Markdown lists."""
    cited = [key for key in SOURCES if key in set(table.get("source", []))]
    shown = set(table.get("model", []))
    lines = ["Sources:", *(f"- {key}: {SOURCES[key]}" for key in cited)]
    notes = [f"- {e.model}: {e.note}" for e in entries if e.note and e.model in shown]
    return "\n".join(lines + (["", "Notes:", *notes] if notes else [])) + "\n"


def reproduction_markdown(table: pd.DataFrame, seconds: float | None = None) -> str:
    """The reproduction table as Markdown with a short preamble, its sources and notes."""
    lines = [
        "# Reproduction: measured vs published",
        "",
        f"Measured by attnbench at {INPUT_SIZE}x{INPUT_SIZE}, batch 1, {NUM_CLASSES} classes. ✓: the measured value "
        "equals the published count, or rounds to the published figure at its printed precision. MACs: one "
        "multiply-accumulate = 1 (what these tables call FLOPs).",
        "",
        table.to_markdown(index=False, disable_numparse=True),
        "",
        sources_markdown(table),
    ]
    if seconds is not None:
        lines.append(f"Measured in {seconds:.1f} s.")
    return "\n".join(lines) + "\n"


def write_reproduction(results_dir: Path) -> tuple[Path, str]:
    """Measure every published model, write RESULTS/reproduction.md, and return its path and text."""
    started = time.perf_counter()
    table = reproduce()
    text = reproduction_markdown(table, time.perf_counter() - started)
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / "reproduction.md"
    path.write_text(text)
    return path, text
