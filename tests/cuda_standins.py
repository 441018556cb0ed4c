"""CPU stand-ins for what only runs on CUDA, so that the CUDA-only branches run in CI.

Each helper patches one CUDA facility with a CPU equivalent (through pytest's ``monkeypatch``,
so everything is undone after the test):

- ``simulate_cuda_device``: ``anogen``'s ``is_cuda`` says yes for ``"cpu"``, so the code takes
  its CUDA branches while every tensor stays on the CPU;
- ``cuda_autocast_on_cpu``: ``torch.autocast("cuda", ...)`` runs as CPU autocast in the same
  dtype, ``torch.amp.GradScaler("cuda")`` as a CPU scaler;
- ``cuda_graphs_on_cpu``: ``torch.cuda.graph`` / ``CUDAGraph`` / streams replaced by
  ``GraphRecorder``, which records the ATen ops of the captured region and replays them on the
  same tensors; AdamW's ``capturable`` path is allowed on the CPU;
- ``simulate_gpu_count``: NVML reports ``n`` GPUs, and every call that would initialise CUDA
  in this process is a spy that records (and fails) instead.

What they cannot show: kernel speed, real device memory, the CUDA caching allocator and
graph memory pools, asynchronous errors, NCCL, and numerics of the GPU's own kernels.
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# ----------------------------------------------------------------------------- device and autocast


def simulate_cuda_device(monkeypatch, *modules) -> None:
    """``is_cuda("cpu")`` is True in ``anogen.devices`` and in each module given (those that
    imported ``is_cuda`` by name)."""
    import anogen.devices as devices

    original = devices.is_cuda

    def is_cuda(device) -> bool:
        return original(device) or str(device).split(":", 1)[0] == "cpu"

    monkeypatch.setattr(devices, "is_cuda", is_cuda)
    for module in modules:
        monkeypatch.setattr(module, "is_cuda", is_cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


def cuda_autocast_on_cpu(monkeypatch) -> None:
    """CUDA autocast as CPU autocast in the same dtype; CUDA's GradScaler as a CPU one."""
    real_autocast, real_scaler = torch.autocast, torch.amp.GradScaler

    def autocast(device_type, *args, **kwargs):
        return real_autocast("cpu" if device_type == "cuda" else device_type, *args, **kwargs)

    def scaler(device="cuda", *args, **kwargs):
        return real_scaler("cpu" if device == "cuda" else device, *args, **kwargs)

    monkeypatch.setattr(torch, "autocast", autocast)
    monkeypatch.setattr(torch.amp, "GradScaler", scaler)


# ----------------------------------------------------------------------------- graph capture


class HostSyncInCapture(RuntimeError):
    """A value was copied to the host inside a captured region (a CUDA graph capture fails so)."""


class _Capture(TorchDispatchMode):
    """Records every ATen op with its tensors; undoes its writes at the end, since a real
    capture executes nothing."""

    def __init__(self, graph: GraphRecorder):
        super().__init__()
        self.graph = graph
        self.saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default):
            raise HostSyncInCapture(f"{func} inside a CUDA graph capture")
        for i, arg in enumerate(func._schema.arguments):
            value = args[i] if i < len(args) else kwargs.get(arg.name)
            if arg.alias_info is not None and arg.alias_info.is_write:
                for t in tree_flatten(value)[0]:
                    if isinstance(t, torch.Tensor) and id(t) not in self.saved:
                        self.saved[id(t)] = (t, t.detach().clone())
        out = func(*args, **kwargs)
        self.graph.ops.append((func, args, kwargs, out))
        return out

    def undo_writes(self) -> None:
        with torch.no_grad():
            for t, before in reversed(list(self.saved.values())):
                t.copy_(before)


class GraphRecorder:
    """Stands in for ``torch.cuda.CUDAGraph``: ``replay()`` runs the recorded ops again on the
    same input tensors and writes each op's fresh result into the tensor it returned at
    capture, so the captured region's outputs (and everything it updated in place) change
    exactly as a replayed graph's would."""

    captures = 0  # class-wide: how many captures happened (tests check that one did)

    def __init__(self):
        self.ops: list = []
        self.replays = 0

    def replay(self) -> None:
        with torch.no_grad():
            for func, args, kwargs, out in self.ops:
                fresh = func(*args, **kwargs)
                aliased = [r.alias_info is not None for r in func._schema.returns]
                outs = out if isinstance(out, (tuple, list)) else (out,)
                news = fresh if isinstance(fresh, (tuple, list)) else (fresh,)
                for k, (recorded, new) in enumerate(zip(outs, news)):
                    # in-place ops and views already wrote into / alias the recorded storage
                    if isinstance(recorded, torch.Tensor) and not (k < len(aliased) and aliased[k]):
                        recorded.copy_(new)
        self.replays += 1


@contextlib.contextmanager
def _graph(graph: GraphRecorder, *args, **kwargs):
    mode = _Capture(graph)
    try:
        with mode:
            yield
    finally:
        mode.undo_writes()
    GraphRecorder.captures += 1


class _Stream:
    def wait_stream(self, other) -> None:
        pass


def cuda_graphs_on_cpu(monkeypatch) -> None:
    """``torch.cuda`` graphs and streams as CPU stand-ins; AdamW's capturable path on the CPU."""
    import torch.optim.adam as adam

    monkeypatch.setattr(GraphRecorder, "captures", 0)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", GraphRecorder)
    monkeypatch.setattr(torch.cuda, "graph", _graph)
    monkeypatch.setattr(torch.cuda, "Stream", _Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a, **k: _Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    supported = adam._get_capturable_supported_devices
    monkeypatch.setattr(adam, "_get_capturable_supported_devices", lambda *a, **k: [*supported(*a, **k), "cpu"])


# ----------------------------------------------------------------------------- device count


class CudaInitSpy:
    """Records every call that would initialise CUDA (or ask the driver) in this process."""

    def __init__(self):
        self.calls: list[str] = []

    def make(self, name: str):
        def spy(*args, **kwargs):
            self.calls.append(name)
            raise AssertionError(f"{name}() would initialise CUDA in this process")

        return spy


def simulate_gpu_count(monkeypatch, n: int) -> CudaInitSpy:
    """NVML reports ``n`` visible GPUs (honouring nothing else); driver calls are spies."""
    spy = CudaInitSpy()
    monkeypatch.setattr(torch.cuda, "_device_count_nvml", lambda: n)
    monkeypatch.setattr(torch.cuda, "_is_compiled", lambda: True)
    for name in ("device_count", "init", "_lazy_init", "is_available"):
        monkeypatch.setattr(torch.cuda, name, spy.make(f"torch.cuda.{name}"))
    monkeypatch.setattr(torch._C, "_cuda_getDeviceCount", spy.make("torch._C._cuda_getDeviceCount"), raising=False)
    return spy


# ----------------------------------------------------------------------------- host syncs


class HostSyncCounter(TorchDispatchMode):
    """Counts what makes the host wait for the device: ``.item()`` / ``float(t)`` / ``bool(t)``
    (ATen's ``_local_scalar_dense`` / ``is_nonzero``) and ``.cpu()`` / ``.tolist()`` /
    ``.numpy()`` (patched while ``counting`` runs; on the CPU they dispatch nothing).

    ``host_side(t)`` names tensors that live on the host on a GPU too, whose reads cost no
    sync: the optimisers' step counters (non-capturable Adam / SGD keep them on the CPU and
    read them with ``.item()``)."""

    def __init__(self, host_side=lambda t: False):
        super().__init__()
        self.calls: list[str] = []
        self.host_side = host_side

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default):
            if not self.host_side(args[0]):
                self.calls.append(str(func))
        return func(*args, **(kwargs or {}))


def optimizer_step_counters(optimizers):
    """``host_side`` for ``HostSyncCounter``: the ``step`` tensors of these optimisers' states."""

    def host_side(t) -> bool:
        return any(t is st.get("step") for opt in optimizers for st in opt.state.values())

    return host_side


@contextlib.contextmanager
def counting_host_syncs(monkeypatch, host_side=lambda t: False):
    counter = HostSyncCounter(host_side)
    with monkeypatch.context() as m:
        for name in ("cpu", "tolist", "numpy"):
            real = getattr(torch.Tensor, name)

            def counted(self, *args, _real=real, _name=name, **kwargs):
                counter.calls.append(f"Tensor.{_name}")
                return _real(self, *args, **kwargs)

            m.setattr(torch.Tensor, name, counted)
        with counter:
            yield counter
