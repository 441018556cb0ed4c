"""Stage 1's speed paths: static device inputs and a captured CUDA graph (``EmbeddingTrainer``'s).

Neither changes what is computed; ``embedding.cuda_graph`` is runtime-only, not part of the
content key.

- static inputs (``static_inputs=True``, implied by ``cuda_graph``): the posterior
  mean/std and latent masks of all (support item, orientation) pairs are stacked once on
  the device; each step the same CPU draws as the plain path are copied into fixed device
  buffers and gathered with ``index_select`` -- the same values, bit for bit, so the
  plain and static paths give identical vectors and losses (tested on CPU);
- CUDA graph (``cuda_graph=True``, CUDA with bf16 or no autocast only): after
  ``GRAPH_WARMUP`` eager static steps, forward + backward + AdamW step are captured once
  and replayed. AdamW then runs with ``capturable=True`` (same update rule, step count
  kept on the device), so results match the eager path within float round-off, not bit
  for bit; fp16 autocast (GradScaler) falls back to the eager static path. A checkpoint
  resumes under either setting (AdamW's ``capturable`` follows the current run, not the
  checkpoint's); the CPU tests stand in for CUDA with ``tests/cuda_standins.py``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger("anogen.embedding")

GRAPH_WARMUP = 3  # eager steps before a CUDA graph is captured


class CudaGraphSteps:
    """The static-input and CUDA-graph steps of ``anogen.embedding.trainer.EmbeddingTrainer``
    (a base class of it: these methods read the trainer's draws, buffers and optimiser)."""

    _graph_start = 0  # step at which this process started (warm-up counts from here)

    def _prepare_static(self) -> None:
        """Stack posterior mean/std and masks of all (item, orientation) pairs; fixed input buffers."""
        n = len(self.items)
        order = [(i, f) for i in range(n) for f in self.flips_needed]  # row = i * nf + orientation
        self._static_mean = torch.cat([self.posterior[k][0] for k in order])
        self._static_std = torch.cat([self.posterior[k][1] for k in order])
        self._static_mask = torch.cat([self.masks[k] for k in order])
        self._template_ids_dev = self.template_ids.to(self.device)
        b, dev = self.batch_size, self.device
        self._buf = {
            "rows": torch.zeros(b, dtype=torch.long, device=dev),
            "tmpl": torch.zeros(b, dtype=torch.long, device=dev),
            "kl": torch.zeros((b, *self.latent_shape), device=dev),
            "noise": torch.zeros((b, *self.latent_shape), device=dev),
            "timesteps": torch.zeros(b, dtype=torch.long, device=dev),
        }

    def _fill_static(self, d: dict[str, Any]) -> None:
        """Copy this step's draws into the fixed device buffers (the only host-to-device traffic)."""
        orientation = (
            d["flips"].long() if len(self.flips_needed) == 2 else torch.zeros(self.batch_size, dtype=torch.long)
        )
        rows = torch.tensor(d["idx"], dtype=torch.long) * len(self.flips_needed) + orientation
        for name, value in (
            ("rows", rows),
            ("tmpl", d["tmpl"]),
            ("kl", d["kl"]),
            ("noise", d["noise"]),
            ("timesteps", d["timesteps"]),
        ):
            self._buf[name].copy_(value, non_blocking=True)

    def _static_batch(self) -> dict[str, Any]:
        """The batch as a function of the fixed buffers only (what a CUDA graph captures)."""
        rows = self._buf["rows"]
        mean = self._static_mean.index_select(0, rows)
        std = self._static_std.index_select(0, rows)
        return {
            "latents": (mean + std * self._buf["kl"]) * self.backbone.scaling_factor,
            "noise": self._buf["noise"],
            "timesteps": self._buf["timesteps"],
            "input_ids": self._template_ids_dev.index_select(0, self._buf["tmpl"]),
            "mask": self._static_mask.index_select(0, rows) if self.mask_loss else None,
        }

    def _capture_graph(self) -> None:
        """Record forward + backward + AdamW step on the current buffers (executes nothing)."""
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss = self._optimise(self._static_batch())
        self._graph, self._graph_loss = graph, loss

    def _static_step(self) -> torch.Tensor:
        """One step on the fixed buffers: eager, eager off the default stream (graph warm-up), or a replay."""
        self._fill_static(self._draw())
        if self.cuda_graph and self._graph is None and self.step_count >= self._graph_start + GRAPH_WARMUP:
            try:
                self._capture_graph()
            except RuntimeError as exc:  # pragma: no cover - GPU only
                log.warning("CUDA graph capture failed (%s); continuing eagerly", exc)
                self.cuda_graph = False
        if self._graph is not None:
            self._graph.replay()
            return self._graph_loss.clone()
        if self.cuda_graph:
            side = torch.cuda.Stream()  # eager warm-up off the default stream, as capture needs
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                loss = self._optimise(self._static_batch())
            torch.cuda.current_stream().wait_stream(side)
            return loss
        return self._optimise(self._static_batch())

    @property
    def graph_captured(self) -> bool:
        """Whether steps now replay a captured CUDA graph (a failed capture falls back to eager)."""
        return self._graph is not None

    def _optimizer_for_this_run(self) -> None:
        """After loading a checkpoint: AdamW's ``capturable`` and step counters as THIS run needs.

        ``load_state_dict`` takes ``capturable`` from the checkpoint, and ``cuda_graph`` is not
        in the key, so the run that wrote it may have had the other setting: a graph run's
        state resumed eagerly fails on its next step (capturable needs device step counters),
        and an eager run's state resumed with a graph makes the capture fail. The update rule
        is the same either way; only where the step count lives differs.
        """
        capturable = self.cuda_graph
        for group in self.optimizer.param_groups:
            group["capturable"] = capturable
            for p in group["params"]:
                st = self.optimizer.state.get(p)
                if st and "step" in st:
                    # a fresh AdamW's layout: a float32 scalar on the parameter's device when
                    # capturable, on the CPU otherwise
                    st["step"] = torch.as_tensor(st["step"], dtype=torch.float32).to(p.device if capturable else "cpu")
