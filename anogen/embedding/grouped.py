"""Stage 1, K concepts at once: ``GroupedEmbeddingTrainer`` (a library capability and benchmark).

K (category, defect) concepts on one frozen backbone in one process, one forward/backward of
batch K x b per step; each concept keeps its own vector, AdamW state and generators, and its
loss is computed on its own slice, so the gradient of each vector is exactly that of training
it alone (equal within float round-off of the batched kernels; tested on CPU).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from anogen.embedding.trainer import EmbeddingTrainer, masked_noise_loss
from anogen.errors import ConfigError


class GroupedEmbeddingTrainer:
    """K concepts ((category, defect) support sets) trained together on one frozen backbone.

    Every concept is an ``EmbeddingTrainer`` of its own (vector, AdamW state, generators,
    posterior cache) sharing the one placeholder token; per step their batches are
    concatenated into one text-encoder + UNet pass of batch K x b, where one forward hook
    splices concept k's vector into the placeholder positions of rows k*b .. k*b+b-1. The
    loss of concept k is ``masked_noise_loss`` on its own rows; the sum is backpropagated,
    and since no operation of either network mixes samples of a batch (GroupNorm,
    attention and the loss are per sample) the gradient of vector k is exactly the
    gradient of concept k's loss alone. Results equal training each concept alone up to
    float round-off of the batched kernels. Library capability and benchmark: the DAG
    keeps one job per (category, defect) so partial rebuilds stay per artifact.
    """

    def __init__(
        self,
        backbone,
        concepts: Sequence[Sequence],
        spec: dict,
        *,
        device: str = "cpu",
        n_devices: int = 1,
        gradient_checkpointing: bool,
    ):
        """``spec`` as for ``EmbeddingTrainer`` (its ``mixed_precision`` must not mean fp16)."""
        if not concepts:
            raise ValueError("no concept to train")
        backbone.to(device)
        backbone.freeze()
        self.backbone = backbone
        token_id = backbone.add_placeholder_token(str(spec["placeholder_token"]), spec["init_word"])
        self.trainers = [
            EmbeddingTrainer(
                backbone,
                items,
                spec,
                device=device,
                cuda_graph=False,  # one graph per concept cannot share the batched pass
                n_devices=n_devices,
                gradient_checkpointing=gradient_checkpointing,
                _shared_token_id=token_id,
            )
            for items in concepts
        ]
        first = self.trainers[0]
        if first.grad_scaler is not None:
            raise ConfigError("diffusion.mixed_precision", "grouped concepts need bf16 or fp32 (no fp16 loss scaling)")
        self.token_id = token_id
        self._rows: torch.Tensor | None = None
        self._hook = backbone.input_embeddings().register_forward_hook(self._splice)

    def _splice(self, module, args, output):
        where = (args[0] == self.token_id).unsqueeze(-1)
        return torch.where(where, self._rows.to(output.dtype), output)

    def step(self) -> list[float]:
        """One optimiser step of every concept; returns their losses."""
        return torch.stack(self.step_async()).cpu().tolist()

    def step_async(self) -> list[torch.Tensor]:
        trainers = self.trainers
        batches = [t.sample_batch() for t in trainers]
        b = [bt["latents"].shape[0] for bt in batches]
        for t in trainers:
            t.optimizer.zero_grad(set_to_none=True)
        self._rows = torch.cat([t.vector.expand(n, -1) for t, n in zip(trainers, b)])[:, None, :]
        first = trainers[0]
        cat = {k: torch.cat([bt[k] for bt in batches]) for k in ("latents", "noise", "timesteps")}
        cat["input_ids"] = torch.cat([bt["input_ids"] for bt in batches])
        cat["mask"] = torch.cat([bt["mask"] for bt in batches]) if first.mask_loss else None
        latents, noise, ts = cat["latents"], cat["noise"], cat["timesteps"]
        noisy = first.scheduler.add_noise(latents, noise, ts)
        target = noise if first.prediction_type == "epsilon" else first.scheduler.get_velocity(latents, noise, ts)
        with first._autocast():
            text = self.backbone.encode_text(cat["input_ids"])
            pred = self.backbone.unet(noisy, ts, encoder_hidden_states=text).sample
        losses, start = [], 0
        for n in b:
            sl = slice(start, start + n)
            losses.append(masked_noise_loss(target[sl], pred[sl], None if cat["mask"] is None else cat["mask"][sl]))
            start += n
        torch.stack(losses).sum().backward()
        self._rows = None
        out = []
        for t, loss in zip(trainers, losses):
            t.optimizer.step()
            t.step_count += 1
            t._pending.append(loss.detach())
            out.append(loss.detach())
        return out

    def close(self) -> list[torch.Tensor]:
        """Remove the hook; return every concept's learned vector (CPU). The backbone's row is untouched."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        return [t.vector.detach().cpu().clone() for t in self.trainers]
