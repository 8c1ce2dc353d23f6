"""One GPU check: every CUDA path of the harness, exercised and summarised in one table.

    python -m attnbench.gpucheck            # on a CUDA machine: within about 8 minutes
    python -m attnbench.gpucheck --dry-run  # anywhere: the same path on the CPU at tiny sizes (CI runs it)

Stages, each timed, each a row block of the closing table:

1. tests: `pytest -m cuda` (the cuda-marked tests; the dry run collects those of one file, which
   skip without a GPU).
2. modules: every registered module at its paper defaults in ResNet-50 at 224, batch 32, bf16,
   channels-last, measured by the grid's own runner as one comparison group: paired whole-model
   timing (CUDA events, the A/A control), each module alone at its real shape, and its roofline
   fractions against the GPU's datasheet peaks (attnbench.measure.roofline). Dry run: two
   modules in a CIFAR ResNet-20 at 16x16, batch 2, fp32, NCHW, one thread, nominal peaks.
3. cross-check: the CUDA-event median of a ResNet-50 forward (eager, and replayed from a CUDA
   graph) against triton.testing.do_bench's median where triton imports, else against the
   profiler's kernel time per iteration (the graph replay: no launch gaps); they must agree
   within 5 %. Both sides flush L2 before each forward, as do_bench does. Dry run: the perf_counter
   median against the profiler's per-iteration time, reported, not enforced.
4. training: ResNet-18 (CIFAR layout) on CIFAR-shaped synthetic data, bf16, channels-last: images/s
   of the last epoch, and the GPU-busy fraction of a profiled stretch of steps (union of kernel
   intervals over wall time). Dry run: fp32, a few steps; busy = the CPU ops' share of the wall time.

Exit status: 0 when every stage passed, 1 when one failed (the table says which), 2 on bad input
(one line, as the CLI).
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

AGREEMENT = 0.05  # event medians and the reference must agree this closely
ROOT = Path(__file__).resolve().parents[1]
DRY_PEAKS = {"device": "nominal CPU (dry run)", "bandwidth": 20e9, "compute": 200e9, "mode": "fp32"}


@dataclass(frozen=True)
class Sizes:
    """What each stage runs at: the real check's sizes, or the dry run's."""

    device: str
    dtype: str
    channels_last: bool
    backbone: str
    input_size: int
    batch_size: int
    modules: tuple[str, ...] | None  # None: every registered module
    warmup: int
    repeats: int
    rounds: int
    cross_warmup: int
    cross_repeats: int
    train_backbone: str
    train_samples: int
    train_batch: int
    train_epochs: int
    profiled_steps: int
    tests: tuple[str, ...]
    threads: int | None  # CPU intra-op threads (None: torch's count)
    train_size: int = 32

    @classmethod
    def real(cls) -> Sizes:
        return cls("cuda", "bf16", True, "resnet50", 224, 32, None, 10, 40, 8, 25, 100, "cifar_resnet18", 10240,
                   256, 2, 20, (), None)

    @classmethod
    def dry(cls) -> Sizes:
        # one thread: a shared CI machine's two cores oversubscribe with two, and a forward then takes many times longer
        return cls("cpu", "fp32", False, "cifar_resnet20", 16, 2, ("se", "cbam"), 1, 4, 2, 1, 5, "cifar_resnet18", 64,
                   16, 1, 2, ("tests/test_latency.py",), 1, 16)


@dataclass
class Stage:
    """One stage's outcome: passed or not, its seconds, its figures (label, value) for the table."""

    name: str
    ok: bool = True
    seconds: float = 0.0
    figures: list[tuple[str, str]] = field(default_factory=list)
    note: str = ""


def run_stage(name: str, body: Callable[[Stage], None]) -> Stage:
    """Run one stage; an exception fails the stage (its last line is the note), not the check."""
    stage = Stage(name)
    started = time.perf_counter()
    try:
        body(stage)
    except Exception as error:  # noqa: BLE001 - reported in the table
        stage.ok = False
        stage.note = f"{type(error).__name__}: {error}".splitlines()[0][:160]
        traceback.print_exc(file=sys.stderr)
    stage.seconds = time.perf_counter() - started
    return stage


# ----------------------------------------------------------------------------------------------- 1. tests

def cuda_tests(sizes: Sizes, dry: bool) -> Callable[[Stage], None]:
    def body(stage: Stage) -> None:
        command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", *sizes.tests]
        out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        summary = next((line for line in reversed(out.stdout.splitlines()) if line.strip()), "(no output)")
        stage.figures.append(("pytest -m cuda", summary.strip("= ")))
        # 0: passed; 5: nothing collected (a CPU-only selection)
        stage.ok = out.returncode in (0, 5) and (dry or "passed" in summary)
        if not stage.ok:
            stage.note = f"pytest exited {out.returncode}"
            sys.stderr.write(out.stdout[-4000:])
    return body


# ----------------------------------------------------------------------------------------------- 2. modules

def module_points(sizes: Sizes) -> list[Any]:
    """The group: the baseline and every module (or the dry run's few) at paper defaults."""
    from attnbench.config.point import make_point
    from attnbench.core.errors import ConfigError
    from attnbench.modules import module_names

    names = ["none", *(sizes.modules if sizes.modules is not None else [n for n in module_names() if n != "none"])]
    points = []
    for name in names:
        try:
            points.append(make_point(sizes.backbone, name, input_size=sizes.input_size, batch_size=sizes.batch_size,
                                     dtype=sizes.dtype, channels_last=sizes.channels_last))
        except ConfigError:
            continue  # a module this backbone does not take at its defaults
    return points


def peaks_for(sizes: Sizes) -> dict[str, Any] | None:
    import torch

    from attnbench.measure.roofline import device_peaks

    if sizes.device == "cuda":
        return device_peaks(torch.cuda.get_device_name(), sizes.dtype)
    return DRY_PEAKS


def slot_rooflines(row: dict[str, Any], model: Any, sizes: Sizes, peaks: dict[str, Any]) -> list[dict[str, Any]]:
    """Each timed slot's roofline from the row's counts and module-alone time (as the slot plugin computes it)."""
    from attnbench.measure.roofline import minimum_bytes, roofline

    modules = dict(model.named_modules())
    lines = []
    for key, value in row.items():
        if not (key.startswith("slot/") and key.endswith("/latency_ms")):
            continue
        name = key[len("slot/"):-len("/latency_ms")]
        macs, elementwise = row.get(f"by_slot/{name}/macs"), row.get(f"by_slot/{name}/elementwise_flops")
        shape = row.get(f"slot/{name}/shape")
        if macs is None or elementwise is None or not shape or name not in modules or not value:
            continue
        dims = tuple(int(d) for d in str(shape).split("x"))
        flops = sizes.batch_size * (2 * macs + elementwise)
        moved = minimum_bytes(modules[name], dims, sizes.dtype, sizes.batch_size)
        lines.append({"slot": name, **roofline(flops, moved, value / 1e3, peaks)})
    return lines


def plugin_rooflines(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The roofline fields the slot-latency plugin wrote for each slot (on a GPU with known peaks)."""
    names = [key[len("slot/"):-len("/roofline_fraction")] for key in row
             if key.startswith("slot/") and key.endswith("/roofline_fraction")]
    return [{"slot": name, **{field: row[f"slot/{name}/{field}"] for field in
                              ("bound", "bandwidth_fraction", "compute_fraction", "roofline_fraction")}} for name in names]


def modules_stage(sizes: Sizes) -> Callable[[Stage], None]:
    def body(stage: Stage) -> None:
        from attnbench.run.measurements.base import build_point_model
        from attnbench.run.runner import parse_options, run_group

        points = module_points(sizes)
        options = parse_options({"latency": {"warmup": sizes.warmup, "repeats": sizes.repeats, "rounds": sizes.rounds,
                                             "threads": sizes.threads, "slots": True}}, None,
                                sizes.device).validate(tuple(points))
        rows = run_group(points, options)
        peaks = peaks_for(sizes)
        failures = []
        table = []
        for point, row in zip(points, rows):
            if isinstance(row, BaseException):
                failures.append(f"{point.attention}: {type(row).__name__}: {str(row).splitlines()[0][:80]}")
                continue
            lines = plugin_rooflines(row)  # on a GPU the slot plugin has placed each slot under its roofline
            if not lines and sizes.device != "cuda" and peaks is not None and point.attention != "none":
                lines = slot_rooflines(row, build_point_model(point), sizes, peaks)  # the dry run: the same figures
            fractions = sorted(line["roofline_fraction"] for line in lines)
            change = row.get("latency_change_pct", row.get("latency_aa_change_pct"))
            low = row.get("latency_change_ci_low_pct", row.get("latency_aa_change_ci_low_pct"))
            high = row.get("latency_change_ci_high_pct", row.get("latency_aa_change_ci_high_pct"))
            table.append((point.attention, row["latency_median_ms"], change, low, high, row.get("attention_latency_ms"),
                          fractions[len(fractions) // 2] if fractions else None,
                          max((line["bandwidth_fraction"] for line in lines), default=None),
                          max((line["compute_fraction"] for line in lines), default=None),
                          ",".join(sorted({line["bound"] for line in lines})) or "-"))
        layout = "channels-last" if sizes.channels_last else "NCHW"
        against = "" if peaks is None else f" (roofline against {peaks['device']} peaks)"
        print(f"\nmodules in {sizes.backbone} at {sizes.input_size}, batch {sizes.batch_size}, {sizes.dtype}, {layout}, "
              f"{sizes.device}{against}:")
        print(f"{'module':<12} {'model ms':>9} {'change % [95% CI]':>26} {'alone ms':>9} {'roofline':>9} "
              f"{'bw frac':>8} {'fl frac':>8}  bound")
        for name, ms, change, low, high, alone, fraction, bandwidth, compute, bound in table:
            ci = "" if change is None else f"{change:+.2f} [{low:+.2f}, {high:+.2f}]" + (" (A/A)" if name == "none" else "")
            print(f"{name:<12} {ms:9.3f} {ci:>26} {_num(alone, 9, 3)} {_num(fraction, 9, 3)} {_num(bandwidth, 8, 3)} "
                  f"{_num(compute, 8, 3)}  {bound}")
        aa = next((row.get("latency_aa_change_pct") for point, row in zip(points, rows)
                   if point.attention == "none" and isinstance(row, dict)), None)
        stage.figures += [("modules measured", f"{len(table)} of {len(points)} (baseline included)"),
                          ("A/A change (noise floor)", "-" if aa is None else f"{aa:+.2f} %"),
                          ("peaks", "none known for this GPU" if peaks is None else f"{peaks['device']} ({peaks['mode']})")]
        if failures:
            stage.ok = False
            stage.note = "; ".join(failures)[:300]
        if peaks is None and sizes.device == "cuda":
            stage.note = (stage.note + "; " if stage.note else "") + "no datasheet peaks for this GPU: roofline skipped"
    return body


def _num(value: Any, width: int, digits: int) -> str:
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return f"{'-':>{width}}" if missing else f"{value:{width}.{digits}f}"


# ----------------------------------------------------------------------------------------------- 3. cross-check

def profiler_iteration_ms(step: Callable[[], Any], device: str, iterations: int) -> float:
    """The profiler's time per iteration: GPU kernel time (summed, per iteration) on CUDA, the iteration's CPU span elsewhere."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, record_function

    from attnbench.measure.native_stderr import silenced_native_stderr

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with silenced_native_stderr(), profile(activities=activities) as prof:
        for _ in range(iterations):
            with record_function("gpucheck_iteration"):
                step()
        if device == "cuda":
            torch.cuda.synchronize()
    events = prof.events()
    if device == "cuda":
        kernels = [e for e in events if e.device_type == DeviceType.CUDA]
        if not kernels:
            raise RuntimeError("the profiler recorded no CUDA kernels")
        return sum(e.time_range.elapsed_us() for e in kernels) / iterations / 1e3
    spans = sorted(e.time_range.elapsed_us() for e in events if e.name == "gpucheck_iteration")
    if not spans:
        raise RuntimeError("the profiler recorded no iterations")
    return spans[len(spans) // 2] / 1e3


def do_bench() -> Callable[..., float] | None:
    """triton.testing.do_bench, or None where triton does not import."""
    try:
        from triton.testing import do_bench as bench
    except Exception:  # noqa: BLE001 - not installed, or built for another torch
        return None
    return bench


def cross_check_stage(sizes: Sizes, dry: bool) -> Callable[[Stage], None]:
    def body(stage: Stage) -> None:
        from attnbench.config.point import make_point
        from attnbench.measure.latency import LatencyOptions, Timed, fixed_threads, timing_context
        from attnbench.measure.paired import median
        from attnbench.run.measurements.base import build_point_model

        point = make_point(sizes.backbone, "none", input_size=sizes.input_size, batch_size=sizes.batch_size)
        model = build_point_model(point)
        bench = do_bench() if sizes.device == "cuda" else None
        cases = [("eager", False)] + ([("CUDA graph", True)] if sizes.device == "cuda" else [])
        worst = 0.0
        for label, graphs in cases:
            # do_bench flushes L2 before each forward: so do the events then; the profiler's kernels run warm
            options = LatencyOptions(device=sizes.device, batch_size=sizes.batch_size, dtype=sizes.dtype,
                                     channels_last=sizes.channels_last, cuda_graphs=graphs, cold_l2=bench is not None,
                                     warmup=sizes.cross_warmup, repeats=sizes.cross_repeats, threads=sizes.threads)
            options.validate()
            with fixed_threads(options.threads), timing_context(options), \
                    Timed(model, point.input_shape[1:], options) as timed:
                timed.warm(options.warmup)
                ours = median(timed.sample(options.repeats))
                if bench is not None:
                    reference = float(bench(timed.forward, warmup=sizes.cross_warmup, rep=sizes.cross_repeats,
                                            return_mode="median"))
                    method = "triton.testing.do_bench median"
                elif sizes.device == "cuda" and not graphs:
                    stage.figures.append((f"{label}: events median", f"{ours:.3f} ms (no triton; the profiler's kernel "
                                          "sum leaves out launch gaps, so it is compared on the graph replay)"))
                    continue
                else:
                    reference = profiler_iteration_ms(timed.forward, sizes.device, max(5, sizes.cross_repeats // 4))
                    method = "profiler kernel time / iteration" if sizes.device == "cuda" else "profiler iteration span"
            gap = abs(ours / reference - 1)
            worst = max(worst, gap)
            timer = "events" if sizes.device == "cuda" else "perf_counter"
            stage.figures.append((f"{label}: {timer} median vs {method}",
                                  f"{ours:.3f} ms vs {reference:.3f} ms ({100 * (ours / reference - 1):+.1f} %)"))
        if dry:
            stage.note = "dry run: agreement reported, not enforced"
        elif worst > AGREEMENT:
            stage.ok = False
            stage.note = f"disagreement {100 * worst:.1f} % > {100 * AGREEMENT:.0f} %"
    return body


# ----------------------------------------------------------------------------------------------- 4. training

def busy_fraction(step: Callable[[], Any], device: str, steps: int) -> float:
    """Share of the wall time of `steps` calls during which the device computes (union of kernel intervals)."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from attnbench.measure.native_stderr import silenced_native_stderr

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with silenced_native_stderr(), profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
    events = prof.events()
    if device == "cuda":
        spans = [(e.time_range.start, e.time_range.end) for e in events if e.device_type == DeviceType.CUDA]
    else:  # the dry run: the CPU ops at the top of the stack
        spans = [(e.time_range.start, e.time_range.end) for e in events
                 if e.device_type == DeviceType.CPU and e.cpu_parent is None and e.name.startswith("aten::")]
    every = [(e.time_range.start, e.time_range.end) for e in events if e.device_type == DeviceType.CPU] + spans
    if not spans or not every:
        raise RuntimeError("the profiler recorded no device activity")
    wall = max(end for _, end in every) - min(start for start, _ in every)
    return _union(spans) / wall if wall > 0 else float("nan")


def _union(spans: Sequence[tuple[float, float]]) -> float:
    total, end = 0.0, -math.inf
    for start, stop in sorted(spans):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def training_stage(sizes: Sizes) -> Callable[[Stage], None]:
    def body(stage: Stage) -> None:
        import torch
        from torch import nn

        from attnbench.config.point import make_point
        from attnbench.measure.latency import autocast
        from attnbench.run.measurements.base import build_point_model
        from attnbench.train import DataSpec, TrainConfig, load_dataset, train_model

        data = load_dataset(DataSpec(dataset="synthetic", image_size=sizes.train_size, synthetic_samples=sizes.train_samples,
                                     num_classes=10, num_workers=0))
        point = make_point(sizes.train_backbone, "none", input_size=sizes.train_size, num_classes=10)
        config = TrainConfig(epochs=sizes.train_epochs, batch_size=sizes.train_batch, amp=sizes.dtype,
                             channels_last=sizes.channels_last, warmup_epochs=0)
        model = build_point_model(point)
        result = train_model(model, data, config, sizes.device)
        if result.failed or result.final is None:
            raise RuntimeError(f"training failed: {result.error}")
        stage.figures.append((f"{sizes.train_backbone} training images/s ({sizes.train_size}x{sizes.train_size}, "
                              f"{sizes.dtype}, batch {sizes.train_batch}, "
                              f"{'channels-last' if sizes.channels_last else 'NCHW'})",
                              f"{result.final.images_per_s:,.0f} (epoch {result.final.epoch})"))
        # a profiled stretch of the same training step, outside the loop (its timing is not disturbed)
        x = torch.randn(sizes.train_batch, 3, sizes.train_size, sizes.train_size, device=sizes.device)
        if sizes.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (sizes.train_batch,), device=sizes.device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        loss_fn = nn.CrossEntropyLoss()
        model.train()

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast(sizes.device, sizes.dtype):
                loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()

        for _ in range(2):
            step()
        busy = busy_fraction(step, sizes.device, sizes.profiled_steps)
        stage.figures.append(("GPU-busy fraction (profiled steps)" if sizes.device == "cuda" else
                              "CPU-op busy fraction (dry run)", f"{busy:.3f}"))
    return body


# ----------------------------------------------------------------------------------------------- the check

def print_table(stages: Sequence[Stage], sizes: Sizes, dry: bool, total: float) -> None:
    """The closing table: one line per figure, stage by stage."""
    import torch

    where = torch.cuda.get_device_name() if sizes.device == "cuda" else f"CPU ({os.cpu_count()} cores), dry run"
    print(f"\nattnbench GPU check on {where}, torch {torch.__version__}; {total:.0f} s in all")
    rows = [("stage", "figure", "value")]
    for stage in stages:
        status = "ok" if stage.ok else "FAILED"
        rows.append((f"{stage.name} [{status}, {stage.seconds:.0f} s]", "", stage.note))
        rows += [("", label, value) for label, value in stage.figures]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for index, row in enumerate(rows):
        print("| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) + " |")
        if index == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check; 0 when every stage passed, 1 when one failed, 2 on bad input."""
    parser = argparse.ArgumentParser(prog="python -m attnbench.gpucheck", description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the same path on the CPU at tiny sizes")
    parser.add_argument("--skip", action="append", default=[], choices=("tests", "modules", "cross-check", "training"),
                        help="leave a stage out (repeatable)")
    args = parser.parse_args(argv)
    import torch

    from attnbench.core.errors import ConfigError

    if not args.dry_run and not torch.cuda.is_available():
        print("python -m attnbench.gpucheck: error: " + str(ConfigError(
            "device", "cuda", "a CUDA device (none is visible here); --dry-run runs the same path on the CPU")),
            file=sys.stderr)
        return 2
    sizes = Sizes.dry() if args.dry_run else Sizes.real()
    if sizes.device == "cuda":
        torch.backends.cudnn.benchmark = True
    if sizes.threads is not None:
        torch.set_num_threads(sizes.threads)
    started = time.perf_counter()
    plan = [("tests", lambda: cuda_tests(sizes, args.dry_run)), ("modules", lambda: modules_stage(sizes)),
            ("cross-check", lambda: cross_check_stage(sizes, args.dry_run)), ("training", lambda: training_stage(sizes))]
    stages = [run_stage(name, make()) for name, make in plan if name not in args.skip]
    print_table(stages, sizes, args.dry_run, time.perf_counter() - started)
    return 0 if all(stage.ok for stage in stages) else 1


if __name__ == "__main__":
    sys.exit(main())
