"""Stage 1's CUDA-graph path on the CPU (tests/cuda_standins.py: a recorder stands in for graph
capture, AdamW's capturable path is allowed on the CPU): the graph step matches the eager one,
and a checkpoint resumes across a change of ``embedding.cuda_graph`` (a runtime switch outside
the key) in either direction, continuing as an uninterrupted run with the new setting would."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import anogen.embedding.cuda_graph as cuda_graph_mod
import anogen.embedding.trainer as trainer_mod
from anogen.checkpoint import load_checkpoint, save_checkpoint
from anogen.diffusion.backbone import load_backbone
from anogen.diffusion.tiny import build_tiny_model
from anogen.embedding import EmbeddingTrainer
from tests import cuda_standins
from tests.test_embedding import _run_job, make_items, make_spec

STEPS, SPLIT = 8, 4  # the graph is captured after GRAPH_WARMUP eager steps of each process


@pytest.fixture(scope="module")
def tiny_ldm(tmp_path_factory):
    return build_tiny_model("ldm", tmp_path_factory.mktemp("tiny") / "tiny-ldm", seed=0, resolution=128)


def _standins(m) -> None:
    cuda_standins.simulate_cuda_device(m, trainer_mod)
    cuda_standins.cuda_autocast_on_cpu(m)
    cuda_standins.cuda_graphs_on_cpu(m)


def _trainer(model, graph: bool, precision: str = "no") -> EmbeddingTrainer:
    spec = make_spec(mixed_precision=precision)
    t = EmbeddingTrainer(load_backbone(str(model)), make_items(), spec, cuda_graph=graph, gradient_checkpointing=False)
    assert t.cuda_graph is graph
    return t


def _steps(monkeypatch, model, graph: bool, steps: int, state=None, *, cuda: bool | None = None, precision="no"):
    """``steps`` steps of a trainer with ``cuda_graph=graph``; on the stand-in CUDA device for a
    graph run (or when ``cuda``), else on the plain CPU."""
    with monkeypatch.context() as m:
        if graph if cuda is None else cuda:
            _standins(m)
        t = _trainer(model, graph, precision)
        if state is not None:
            t.load_state_dict(state)
        for _ in range(steps):
            t.step_async()
        losses = t.losses
        assert (t._graph is not None) is graph and t.cuda_graph is graph  # captured, no fallback
        if graph:
            assert t._graph.replays == t.step_count - t._graph_start - cuda_graph_mod.GRAPH_WARMUP
        return t, losses


def _assert_same_run(losses, vector, ref_losses, ref_vector, init):
    np.testing.assert_allclose(losses, ref_losses, rtol=2e-5, atol=1e-7)
    moved = float((ref_vector - init).norm())
    assert moved > 0
    assert float((vector - ref_vector).norm()) < 1e-4 * moved


def test_graph_step_matches_eager_and_syncs_nothing(monkeypatch, tiny_ldm):
    """The recorder refuses any copy to the host inside the capture, as a real capture would."""
    eager, eager_losses = _steps(monkeypatch, tiny_ldm, False, STEPS)
    graph, graph_losses = _steps(monkeypatch, tiny_ldm, True, STEPS)
    init = _trainer(tiny_ldm, False).vector.detach()
    _assert_same_run(graph_losses, graph.vector.detach(), eager_losses, eager.vector.detach(), init)


def test_graph_step_in_bf16_matches_eager_bf16(monkeypatch, tiny_ldm):
    """Both on the stand-in CUDA device with bf16 autocast (as CPU autocast); the graph path's
    autocast runs without its weight cache, the eager one with it: the same values."""
    eager, eager_losses = _steps(monkeypatch, tiny_ldm, False, STEPS, cuda=True, precision="bf16")
    assert eager.autocast_dtype == torch.bfloat16
    graph, graph_losses = _steps(monkeypatch, tiny_ldm, True, STEPS, precision="bf16")
    init = _trainer(tiny_ldm, False).vector.detach()
    fp32, _ = _steps(monkeypatch, tiny_ldm, False, STEPS)
    # bf16 round-off, amplified by AdamW's normalisation, is what separates the two runs: less
    # than it separates bf16 from fp32, and the losses agree closely
    gap = float((graph.vector.detach() - eager.vector.detach()).norm())
    assert gap < 0.5 * float((fp32.vector.detach() - eager.vector.detach()).norm())
    assert gap < 0.02 * float((eager.vector.detach() - init).norm())
    # bf16 keeps 8 bits of mantissa (a relative step of 2**-8 = 3.9e-3): which CPU kernels run decides
    # the last bit, and a loss that passes through many bf16 operations can move by two of those steps
    # (measured 5.6e-3 on one machine), so 1e-2; the two checks above are the ones that separate paths.
    np.testing.assert_allclose(graph_losses, eager_losses, rtol=1e-2)


@pytest.mark.parametrize("first,then", [(True, False), (False, True)], ids=["graph-then-eager", "eager-then-graph"])
def test_resume_across_a_cuda_graph_change(monkeypatch, tiny_ldm, tmp_path, first, then):
    """Before the fix: graph -> eager failed on the first resumed step (AdamW kept the
    checkpoint's capturable=True: 'params and state_steps must be on supported devices');
    eager -> graph made the capture fail and the run fall back to eager."""
    ref, ref_losses = _steps(monkeypatch, tiny_ldm, then, STEPS)
    head, _ = _steps(monkeypatch, tiny_ldm, first, SPLIT)
    save_checkpoint(tmp_path / "state.pt", head.state_dict())  # through the file, as a rerun reads it
    state = load_checkpoint(tmp_path / "state.pt")
    tail, losses = _steps(monkeypatch, tiny_ldm, then, STEPS - SPLIT, state=state)
    assert tail.step_count == STEPS and len(losses) == STEPS
    assert all(g["capturable"] is then for g in tail.optimizer.param_groups)
    init = _trainer(tiny_ldm, False).vector.detach()
    _assert_same_run(losses, tail.vector.detach(), ref_losses, ref.vector.detach(), init)


class _Stop(Exception):
    """Ends a job right after a checkpoint, as a kill would (in this process, so the stand-ins hold)."""


def _job(model, out, graph: bool, spec):
    return _run_job(model, spec, out, make_items(), checkpoint_every=SPLIT, cuda_graph=graph)


def test_job_resumed_with_a_graph_captures_one_and_says_so(monkeypatch, tiny_ldm, tmp_path):
    """The job path: an eager run stopped at its checkpoint, rerun with ``cuda_graph: true`` on
    the stand-in device. Before the fix the capture failed, the job went on eagerly and its
    manifest said ``cuda_graph: false``."""
    import json

    import anogen.resumable as resumable

    spec = make_spec(mixed_precision="no", steps=STEPS)
    with monkeypatch.context() as m:
        _standins(m)
        ref = json.loads(_job(tiny_ldm, tmp_path / "ref", True, spec).read_text())

    def stop(job, done):
        if done == SPLIT:
            raise _Stop

    with monkeypatch.context() as m:
        m.setattr(resumable, "after_progress", stop)
        with pytest.raises(_Stop):
            _job(tiny_ldm, tmp_path / "run", False, spec)
    with monkeypatch.context() as m:
        _standins(m)
        manifest = json.loads(_job(tiny_ldm, tmp_path / "run", True, spec).read_text())
    assert manifest["extra"]["resumed_from_step"] == SPLIT and manifest["extra"]["cuda_graph"] is True
    assert ref["extra"]["cuda_graph"] is True

    def losses(d):
        return [float(line.split(",")[1]) for line in (d / "loss.csv").read_text().splitlines()[1:]]

    np.testing.assert_allclose(losses(tmp_path / "run"), losses(tmp_path / "ref"), rtol=2e-5, atol=1e-7)
