"""Counting without computing: a JIT trace whose heavy CPU kernels only produce outputs of the right shape.

fvcore counts from the graph `torch.jit` records while the model runs once on a real input. The
counts read the graph and the shapes in it, never a value; yet on a CPU that one forward is most
of the counting time (ResNet-50 at 224: a 4-GMAC forward). While `shape_kernels()` is in force,
the CPU kernels of the heavy floating-point ops (convolution, matrix products, norms, pools,
resampling, the common element-wise ops) are replaced by kernels that take the output's shape,
stride and dtype from the op's meta kernel and return zeros of that layout (in-place
element-wise ops return their input unchanged). The tracer sits above the CPU kernels: it records
every op exactly as before, with the same shapes. Integer and boolean results are computed for
real (through the op's `out=` overload), so index arithmetic keeps its values. Leaving the
context restores torch's own kernels.

Values can still shape a graph: a Python number read from a tensor (`.item()`, `bool()`, `int()`,
`.tolist()`), or an op whose output shape depends on values (nonzero, masked selection, unique,
repeat_interleave by a tensor...). `ValueWatch` finds both where the values come from data (not
from shapes alone); a trace with either is not exact, and the caller counts again the ordinary way
(attnbench.measure.complexity.measure_complexity).
"""
from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

# (op name, overload) of the kernels answered from shapes. Only ops the tracer records itself or
# that run below one it records: aten::convolution is not recorded (its callee aten::_convolution
# is), so replacing it would hide the convolution from the graph.
FUNCTIONAL = (
    ("_convolution", "default"), ("mm", "default"), ("addmm", "default"), ("bmm", "default"),
    ("baddbmm", "default"), ("native_batch_norm", "default"), ("_native_batch_norm_legit_no_training", "default"),
    ("native_layer_norm", "default"), ("native_group_norm", "default"), ("max_pool2d_with_indices", "default"),
    ("avg_pool2d", "default"), ("_adaptive_avg_pool2d", "default"), ("adaptive_max_pool2d", "default"),
    ("mean", "dim"), ("amax", "default"), ("grid_sampler_2d", "default"), ("upsample_bilinear2d", "default"),
    ("upsample_nearest2d", "default"), ("_softmax", "default"),
    ("add", "Tensor"), ("sub", "Tensor"), ("mul", "Tensor"), ("div", "Tensor"), ("relu", "default"),
    ("sigmoid", "default"), ("tanh", "default"), ("gelu", "default"), ("silu", "default"),
    ("hardsigmoid", "default"), ("hardswish", "default"), ("clamp_min", "default"),
)
INPLACE = (
    ("relu_", "default"), ("add_", "Tensor"), ("mul_", "Tensor"), ("sigmoid_", "default"), ("hardsigmoid_", "default"),
    ("hardswish_", "default"), ("silu_", "default"), ("gelu_", "default"), ("tanh_", "default"), ("clamp_min_", "default"),
)
# graph nodes whose output shape, or a Python value the graph then holds, depends on values of their inputs
VALUE_DEPENDENT = frozenset("aten::" + name for name in (
    "nonzero", "nonzero_numpy", "argwhere", "masked_select", "unique", "_unique", "_unique2", "unique_dim",
    "unique_consecutive", "unique_dim_consecutive", "bincount", "item", "_local_scalar_dense", "is_nonzero", "equal",
    "allclose", "Int", "Float", "Bool", "ScalarImplicit", "IntImplicit", "FloatImplicit", "repeat_interleave",
    "tensor_split", "narrow", "index",
))
# nodes whose output holds no value of their tensor inputs, only their shapes
SHAPE_ONLY = frozenset({"aten::size", "aten::numel", "aten::dim", "aten::sym_size", "aten::sym_numel", "prim::Constant"})
READ_METHODS = ("__bool__", "__int__", "__float__", "__index__", "__complex__", "item", "tolist", "numpy")

CACHE_LIMIT = 100_000  # meta results kept (one per distinct op and argument shapes; a ResNet-50 has ~200)
_LOCK = threading.Lock()  # kernels are process-wide: one replacement at a time


def _to_meta(value: Any) -> Any:
    if isinstance(value, Tensor):
        return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device="meta")
    return value


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, Tensor):
        return ("T", tuple(value.shape), value.stride(), value.dtype)
    return value


class _Kernels:
    """The replacement kernels, with a cache of meta results shared by every trace of the process."""

    def __init__(self) -> None:
        self.meta: dict[Any, Any] = {}
        self.answered = 0

    def outputs(self, op: Any, args: tuple, kwargs: dict) -> Any:
        key = (op, _hashable(args), _hashable(tuple(sorted(kwargs.items()))))
        try:
            return self.meta[key]
        except KeyError:
            pass
        except TypeError:  # an argument that does not hash: infer every time
            return op(*tree_map(_to_meta, args), **tree_map(_to_meta, kwargs))
        out = op(*tree_map(_to_meta, args), **tree_map(_to_meta, kwargs))
        if len(self.meta) >= CACHE_LIMIT:  # a long search: start again rather than grow without end
            self.meta.clear()
        self.meta[key] = out
        return out

    def functional(self, op: Any) -> Callable[..., Any]:
        out_variant = getattr(op.overloadpacket, "out", None)

        def kernel(*args: Any, **kwargs: Any) -> Any:
            shapes = self.outputs(op, args, kwargs)
            first = next((t for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)), None)
            if first is not None and first.is_floating_point():  # values computed from floats (max-pool indices too)
                self.answered += 1
                # uninitialised: writing zeros would cost page faults, and no value is read (ValueWatch)
                return tree_map(lambda t: torch.empty_strided(t.shape, t.stride(), dtype=t.dtype)
                                if isinstance(t, Tensor) else t, shapes)
            if out_variant is None or isinstance(shapes, (tuple, list)):
                raise NotImplementedError(f"{op}: a non-floating result the shape kernels cannot compute")
            out = torch.empty_strided(shapes.shape, shapes.stride(), dtype=shapes.dtype)
            return out_variant(*args, **kwargs, out=out)  # integers keep their values: index arithmetic

        return kernel

    def inplace(self, op: Any) -> Callable[..., Any]:
        functional = getattr(torch.ops.aten, op._opname.rstrip("_"))
        out_variant = getattr(functional, "out", None)

        def kernel(self_: Tensor, *args: Any, **kwargs: Any) -> Tensor:
            if self_.is_floating_point():
                self.answered += 1
                return self_
            if out_variant is None:
                raise NotImplementedError(f"{op}: a non-floating tensor the shape kernels cannot compute")
            return out_variant(self_, *args, **kwargs, out=self_)

        return kernel


KERNELS = _Kernels()


@contextlib.contextmanager
def shape_kernels() -> Iterator[_Kernels]:
    """While in force, the CPU kernels of FUNCTIONAL and INPLACE ops answer from shapes (see the module docstring)."""
    with _LOCK:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Overriding a previously registered kernel": that is the point
            library = torch.library.Library("aten", "IMPL")
            try:
                for name, overload in FUNCTIONAL:
                    op = getattr(getattr(torch.ops.aten, name), overload)
                    library.impl(op, KERNELS.functional(op), "CPU")
                for name, overload in INPLACE:
                    op = getattr(getattr(torch.ops.aten, name), overload)
                    library.impl(op, KERNELS.inplace(op), "CPU")
            except BaseException:
                library._destroy()
                raise
        try:
            yield KERNELS
        finally:
            library._destroy()  # torch's kernels are in force again


class ValueWatch:
    """Whether a shapes-only trace can differ from the real one: a value computed from data reached a shape or Python.

    Data is what the shape kernels did not compute: the model's input and weights (graph inputs) and
    everything computed from them. Sizes (`aten::size`, `x.shape` while tracing) and constants are
    not data, and neither is arithmetic on them alone, so `if h * w < 2:` on a traced shape is exact.
    """

    def __init__(self) -> None:
        self.reasons: list[str] = []

    @property
    def exact(self) -> bool:
        """No value computed from data reached the graph's shapes or Python."""
        return not self.reasons

    def check_graph(self, graph: torch._C.Graph) -> None:
        """Note every node whose output can depend on the values of data (a count, a mask, a number read)."""
        clean: dict[Any, bool] = {}
        for node in graph.nodes():
            kind = node.kind()
            if kind not in VALUE_DEPENDENT:
                continue
            read = _mask_indices(node) if kind == "aten::index" else list(node.inputs())[_read_from(kind):]
            if not all(_data_free(v, clean) for v in read):
                self.reasons.append(kind)

    @contextlib.contextmanager
    def reads_caught(self) -> Iterator[None]:
        """Note every tensor computed from data that Python reads a value of (bool, int, item, tolist...) in the block."""
        own = {name: name in torch.Tensor.__dict__ for name in READ_METHODS}
        originals = {name: getattr(torch.Tensor, name) for name in READ_METHODS}

        def watched(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
            def read(tensor: Tensor, *args: Any, **kwargs: Any) -> Any:
                if torch._C._get_tracing_state() is not None and not self._traced_data_free(tensor):
                    self.reasons.append(f"Tensor.{name}")
                return original(tensor, *args, **kwargs)

            return read

        for name, original in originals.items():
            setattr(torch.Tensor, name, watched(name, original))
        try:
            yield
        finally:
            for name, original in originals.items():
                if own[name]:
                    setattr(torch.Tensor, name, original)
                else:
                    delattr(torch.Tensor, name)

    @staticmethod
    def _traced_data_free(tensor: Tensor) -> bool:
        try:
            value = torch._C._get_value_trace(tensor)  # type: ignore[attr-defined]
        except Exception:  # a tensor the trace does not know: cannot vouch for it
            return False
        return _data_free(value, {})


def _mask_indices(node: Any) -> list[Any]:
    """The indices of an aten::index node whose values set its output size: boolean masks (integer indices do not)."""
    indices = node.inputsAt(1).node()
    if indices.kind() != "prim::ListConstruct":
        return [node.inputsAt(1)]  # a list the graph does not spell out: its values must be data-free
    return [v for v in indices.inputs() if v.type().kind() != "NoneType"
            and (v.type().kind() != "TensorType" or v.type().scalarType() not in ("Long", "Int", "Short"))]


def _read_from(kind: str) -> int:
    """Index of the first input whose values the node reads (repeat_interleave(self, repeats): repeats; index: indices)."""
    return 1 if kind in ("aten::repeat_interleave", "aten::tensor_split", "aten::narrow") else 0


def _data_free(value: Any, clean: dict[Any, bool]) -> bool:
    """Whether a graph value is computed from shapes and constants only (not from a graph input's values)."""
    stack = [value]
    while stack:  # iterative: graphs are deep
        current = stack.pop()
        if current in clean:
            continue
        node = current.node()
        kind = node.kind()
        if kind == "prim::Param":  # the model's input and weights
            clean[current] = False
            continue
        if kind in SHAPE_ONLY:
            clean[current] = True
            continue
        pending = [v for v in node.inputs() if v not in clean]
        if pending:
            stack.append(current)
            stack.extend(pending)
            continue
        clean[current] = all(clean[v] for v in node.inputs())
    return clean[value]


def zero_initialised(build: Callable[[], nn.Module]) -> nn.Module:
    """`build()` with every random initialisation replaced by zeros: counts need shapes, not weights.

    Deterministic buffers (DCT filters, index tables, BN statistics) and fills are computed as
    usual; drawing random weights (most of building a ResNet-50) is skipped.
    """
    with _ZeroRandomFills():
        return build()


_RANDOM_FILLS = frozenset({"uniform_", "normal_", "bernoulli_", "random_", "exponential_", "geometric_", "cauchy_",
                           "log_normal_"})


class _ZeroRandomFills(TorchDispatchMode):
    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func._opname in _RANDOM_FILLS and args and isinstance(args[0], Tensor):
            return args[0].zero_()
        return func(*args, **(kwargs or {}))
