"""No host sync per detector step: ``train_step`` leaves its losses on the device and the loop
copies them every ``log_every`` steps (and at checkpoints and the end) in one transfer, so on a
GPU the host queues the next step while the device works. The log rows are those the per-step
``.item()`` wrote before."""

from __future__ import annotations

import pytest
import torch

from anogen.config import validate_config
from anogen.detectors import train as train_mod
from anogen.detectors.destseg.trainer import DestsegTrainer
from anogen.detectors.draem.trainer import DraemTrainer
from anogen.detectors.train_log import _fmt
from anogen.resumable import ResumableJob
from tests.cuda_standins import counting_host_syncs, optimizer_step_counters

SIZE, BATCH, STEPS, LOG_EVERY = 64, 2, 7, 3


def _trainer(detector: str):
    cfg = validate_config({"data_root": "x"})["detectors"][detector]
    if detector == "draem":
        cfg.update(epochs=STEPS, batch_size=BATCH, recon_base_width=8, disc_base_width=8)
        return DraemTrainer(dict(cfg), seed=0, tau=0.9, device="cpu", n_train=BATCH, mixed_precision="no")
    cfg.update(steps=STEPS, student_steps=3, batch_size=BATCH, teacher_weights=None)
    return DestsegTrainer(dict(cfg), seed=0, tau=0.9, device="cpu", n_train=BATCH, mixed_precision="no")


def _batches(n: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for step in range(n):
        mask = (torch.rand(BATCH, 1, SIZE, SIZE, generator=g) > 0.8).float()
        out.append(
            {
                "image": torch.rand(BATCH, 3, SIZE, SIZE, generator=g),
                "clean": torch.rand(BATCH, 3, SIZE, SIZE, generator=g),
                "mask": mask,
                "weak": torch.tensor([True, False]),
                "step": torch.tensor(step),
            }
        )
    return out


def _host_side(trainer, batches=()):
    """What is host memory on a GPU too: the optimisers' step counters and the loader's batches
    (the loop reads each batch's step number)."""
    counters = optimizer_step_counters(list(trainer.optimizers().values()))
    return lambda t: counters(t) or any(t is v for b in batches for v in b.values())


@pytest.mark.parametrize("detector", ["draem", "destseg"])
def test_detector_loop_syncs_only_every_log_every_steps(detector, tmp_path, monkeypatch):
    batches = _batches(STEPS)
    # the rows as the per-step .item() wrote them
    ref = _trainer(detector)
    expected = []
    for step, batch in enumerate(batches):
        row = ref.train_step(batch, step)
        expected.append({k: v.item() if isinstance(v, torch.Tensor) else v for k, v in row.items()})

    trainer = _trainer(detector)
    syncs_before_step = []
    real_step = trainer.train_step

    def step_spy(batch, step):
        syncs_before_step.append(len(counter.calls))
        return real_step(batch, step)

    trainer.train_step = step_spy
    job = ResumableJob(tmp_path, stage="detector", key="k" * 12, spec={}, inputs={})
    with counting_host_syncs(monkeypatch, _host_side(trainer, batches)) as counter:
        last = train_mod._train_loop(job, trainer, batches, 0, 1000, LOG_EVERY, detector)
    syncs_before_step.append(len(counter.calls))
    per_step = [b - a for a, b in zip(syncs_before_step, syncs_before_step[1:])]
    flushes = [s for s in range(1, STEPS + 1) if s % LOG_EVERY == 0 or s == STEPS]
    assert [s for s, n in enumerate(per_step, 1) if n] == flushes, per_step  # steps 3, 6 and 7 only
    assert max(per_step) <= 2  # one copy (.cpu) and one conversion (.tolist) per flush

    rows = (tmp_path / train_mod.LOG_FILE).read_text().splitlines()
    columns = rows[0].split(",")
    assert len(rows) == STEPS + 1
    for step, (line, want) in enumerate(zip(rows[1:], expected), 1):
        got = dict(zip(columns, line.split(",")))
        assert int(got["step"]) == step
        for k, v in want.items():
            assert got[k] == _fmt(v), (step, k)
    assert {k: _fmt(v) for k, v in last.items()} == {k: _fmt(v) for k, v in expected[-1].items()}


@pytest.mark.parametrize("detector,steps", [("draem", [0]), ("destseg", [0, 5])])
def test_train_step_itself_copies_nothing_to_the_host(detector, steps, monkeypatch):
    trainer = _trainer(detector)
    batch = _batches(1)[0]
    for step in steps:
        with counting_host_syncs(monkeypatch, _host_side(trainer)) as counter:
            row = trainer.train_step(batch, step)
        assert counter.calls == [], (step, counter.calls)
        assert isinstance(row["loss"], torch.Tensor) and row["loss"].dim() == 0
