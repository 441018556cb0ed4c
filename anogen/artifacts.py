"""The artifact graph: one table of keyed stages, and the typed job spec the plan emits.

Every keyed artifact lives at ``<results_dir>/<folder>/<key>/`` where ``folder`` is the stage's
template over its wildcards and ``key = content_key(spec, inputs)``. The Snakemake rules'
output patterns and input functions, ``anogen gc``'s referenced directories and the tests all
take paths from here (``Stage.path`` / ``Stage.pattern``), so the layout is written once.
``Plan`` (``anogen.plan``) gives each stage its spec, inputs and upstream artifacts.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Stage:
    """A keyed stage: where its artifacts live and which file marks one complete."""

    name: str
    folder: str  # template under the results folder, over ``wildcards``
    wildcards: tuple[str, ...]
    main_file: str = "manifest.json"

    def path(self, results: str, key: str, values: tuple[str, ...], name: str | None = None) -> str:
        """The path of file ``name`` (default: the main file) of one artifact."""
        folder = self.folder.format(**dict(zip(self.wildcards, values, strict=True)))
        return f"{results}/{folder}/{key}/{name or self.main_file}"

    def pattern(self, results: str, name: str | None = None) -> str:
        """The Snakemake output pattern (wildcards ``{category}``... and ``{key}``) of file ``name``."""
        return f"{results}/{self.folder}/{{key}}/{name or self.main_file}"

    def log_pattern(self, logs: str, rule: str) -> str:
        """One log per job: ``<logs>/<rule>/<wildcards...>/<key>.log``."""
        return "/".join([logs, rule, *(f"{{{w}}}" for w in self.wildcards), "{key}.log"])


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage("support", "support/{category}/{defect}", ("category", "defect")),
        Stage("foreground", "foreground/{category}", ("category",)),
        Stage("embedding", "embeddings/{category}/{defect}", ("category", "defect")),
        Stage("generation", "generated/{category}/{defect}", ("category", "defect")),
        Stage("quality", "quality/{category}/{defect}", ("category", "defect"), "quality.json"),
        Stage("detector", "detectors/{category}/{detector}/{variant}", ("category", "detector", "variant")),
        Stage(
            "evaluation",
            "evaluation/{category}/{detector}/{variant}",
            ("category", "detector", "variant"),
            "metrics.json",
        ),
    )
}


def _frozen(value: Any) -> Any:
    """A read-only view (nested mappings included): a job spec is never edited after planning."""
    if isinstance(value, Mapping):
        return types.MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Plain dicts and lists again (for JSON)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """Everything one keyed job reads, split into the part that is hashed and the part that is not.

    ``spec`` and ``inputs`` make the key (``content_key(spec, inputs)``) and are what the manifest
    records; ``runtime`` holds what changes how fast a job runs or where it reads from, never what
    it produces (batch size, checkpoint interval, speed switches, the model's and data's paths),
    so changing it reruns the job (Snakemake's params trigger) without changing its key.
    """

    stage: Stage
    values: tuple[str, ...]  # the wildcard values, in ``stage.wildcards`` order
    spec: Mapping[str, Any]
    inputs: Mapping[str, str]
    key: str
    runtime: Mapping[str, Any]

    @classmethod
    def make(cls, stage: Stage, values, spec: dict, inputs: dict, key: str, runtime: dict) -> JobSpec:
        return cls(stage, tuple(values), _frozen(spec), _frozen(inputs), key, _frozen(runtime))

    @property
    def wildcards(self) -> dict[str, str]:
        return dict(zip(self.stage.wildcards, self.values, strict=True))

    def path(self, results: str, name: str | None = None) -> str:
        return self.stage.path(results, self.key, self.values, name)
