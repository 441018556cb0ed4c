"""Glue between Snakemake rules and the package: one function per rule.

Each workflow script is two lines that call one of these with the ``snakemake`` object.
A job function:
- sends everything the job prints (Python logging, warnings, tqdm, C-level output) to the
  rule's ``log:`` file;
- recomputes the content key from the params it was given and refuses to run if it does
  not match the key in its output path (a stale or hand-made path never gets filled);
- verifies each cached file it reads against the sha256 its manifest recorded (inputs
  named directly here, files listed in input manifests where the package reads them), so a truncated or edited cached file stops the job with the file named and the
  one command that rebuilds it (``anogen.io.rebuild_command``);
- leases a device slot for GPU rules (see ``anogen.devices``);
- turns an ``AnogenError`` into one clear line on the console and in the log, and exits 1.
Every config value a job uses arrives in ``snakemake.params``; none is read from the
global config, so Snakemake's params trigger and the content keys see all of them.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import re
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from anogen import provenance
from anogen.data.demo import generate_demo_dataset
from anogen.data.geometry import square_pair
from anogen.data.layouts import scan_category
from anogen.data.support import build_support_set, read_support_set
from anogen.devices import lease_device
from anogen.errors import AnogenError, DataError
from anogen.evaluation import summary
from anogen.evaluation.report import write_report_items
from anogen.generation import export
from anogen.io import MANIFEST_NAME, planned_job, verify_file
from anogen.keys import content_key
from anogen.plots import plot_detector_training
from anogen.quality import run as quality_run
from anogen.studies.table import write_study

log = logging.getLogger("anogen.jobs")


def _params(sm) -> dict[str, Any]:
    """The rule's params: ``spec``, ``inputs`` and ``runtime`` arrive as canonical JSON (Plan.job)."""
    p = sm.params
    out = {}
    for name in p.keys():
        value = getattr(p, name)
        if name in ("spec", "inputs", "runtime", "study") and isinstance(value, str):
            value = json.loads(value)
        out[name] = value
    return out


def _one(value) -> str:
    """A named input that is one file, given as a path or as a one-element list (PLAN.upstream_paths)."""
    if isinstance(value, str):
        return value
    (only,) = list(value)
    return str(only)


@contextlib.contextmanager
def _redirect_to_log(log_path: str | None):
    """Point fd 1 and 2 at the log file; keep a handle on the console for the final error line."""
    if not log_path:
        console = sys.__stderr__
        yield console
        return
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    console = os.fdopen(os.dup(saved_err), "w")
    try:
        yield console
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        os.close(saved_out)
        os.close(saved_err)
        console.close()


_KEYED_DIR = re.compile(r"[0-9a-f]{12}")


def _verify_keyed_inputs(paths) -> None:
    """Check the stand-alone cached files a job consumes (e.g. ``learned_embeds.safetensors``).

    Files reached through an input ``manifest.json`` are verified by the package code that
    reads them (``verify_file``), once, as it reads them; this covers the inputs named directly.
    """
    for path in map(Path, paths):
        if path.name == MANIFEST_NAME or not _KEYED_DIR.fullmatch(path.parent.name):
            continue
        if (path.parent / MANIFEST_NAME).is_file():
            verify_file(path.parent / MANIFEST_NAME, path.name)


def _input_notes(paths) -> set[str]:
    """Notes (anogen.provenance) of every input manifest, or of the manifest beside an input file."""
    notes: set[str] = set()
    for path in map(Path, paths):
        manifest = path if path.name == MANIFEST_NAME else path.parent / MANIFEST_NAME
        if manifest.is_file():
            notes.update(provenance.manifest_notes(manifest))
    return notes


def _setup_logging() -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)


def job(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(sm):
        log_path = sm.log[0] if len(sm.log) else None
        with _redirect_to_log(log_path) as console:
            _setup_logging()
            started = time.time()
            rule = getattr(sm, "rule", fn.__name__)
            log.info("rule %s, wildcards %s", rule, dict(sm.wildcards.items()))
            try:
                params = _params(sm)
                key = getattr(sm.wildcards, "key", None)
                if key is not None:
                    expected = content_key(params["spec"], params["inputs"])
                    if expected != key:
                        raise AnogenError(
                            f"output path key {key} does not match the key {expected} of this job's "
                            "config values; re-run snakemake so it plans the current keys"
                        )
                _verify_keyed_inputs(getattr(sm, "input", []))
                inherited = _input_notes(getattr(sm, "input", []))
                threads = str(int(getattr(sm, "threads", 1) or 1))
                # Read by torch/OpenMP when first imported; avoids importing torch in light jobs.
                for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
                    os.environ[var] = threads
                if "torch" in sys.modules:
                    sys.modules["torch"].set_num_threads(int(threads))
                planned = planned_job(key, params["spec"], params["inputs"]) if key else contextlib.nullcontext()
                with provenance.collecting(inherited), planned:
                    fn(sm, params)
            except AnogenError as exc:
                log.error("%s", exc)
                print(f"anogen error in rule {rule}: {exc}", file=console, flush=True)
                sys.exit(1)
            except Exception as exc:
                if _disk_full(exc):
                    # One line instead of a library's traceback; the traceback stays in the log.
                    message = _disk_full_message(sm, rule)
                    log.error("%s\n%s", message, traceback.format_exc())
                    print(f"anogen error in rule {rule}: {message}", file=console, flush=True)
                    sys.exit(1)
                log.error("unexpected failure:\n%s", traceback.format_exc())
                print(f"anogen: rule {rule} failed unexpectedly; see {log_path}", file=console, flush=True)
                raise
            log.info("done in %.1f s", time.time() - started)

    return wrapper


def _disk_full(exc: BaseException | None) -> bool:
    """ENOSPC anywhere in the exception chain (safetensors and torch re-raise it as their own errors)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _disk_full_message(sm, rule: str) -> str:
    """Which folder, how much is free there, how much the job needs (or had written)."""
    import shutil

    from anogen import artifact_sizes as sizes  # loads torch: only when a job ran out of disk

    outputs = list(getattr(sm, "output", []))
    folder = Path(outputs[0]).parent if outputs else Path.cwd()
    free = shutil.disk_usage(sizes.nearest_existing(folder)).free
    written = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0
    need = None
    with contextlib.suppress(Exception):  # the message must not fail for want of an estimate
        spec = _params(sm)["spec"]
        if rule == "train_detector":
            need = sizes.detector_bytes(spec)[1]
    needs = f"the job needs about {sizes.human(need)} at its peak" if need else "the job needed more"
    return (
        f"no space left on device writing {folder}: {sizes.human(free)} free there, {sizes.human(written)} "
        f"written by this job so far, {needs}; free space and rerun (snakemake --rerun-incomplete), "
        "nothing already computed is lost"
    )


@contextlib.contextmanager
def _device():
    # Slot count and lock folder come from ANOGEN_GPU_SLOTS / ANOGEN_LOCK_DIR (see common.smk).
    with lease_device() as lease:
        # One JSON line at each end, so concurrency can be audited from the logs.
        log.info("device lease acquired %s", json.dumps({**lease.as_dict(), "time": time.time()}))
        try:
            yield lease
        finally:
            log.info("device lease released %s", json.dumps({"slot": lease.slot, "time": time.time()}))


def _out_dir(sm, name: str = "manifest") -> Path:
    return Path(getattr(sm.output, name)).parent


# ----------------------------------------------------------------------------- data


@job
def demo_data(sm, params):
    generate_demo_dataset(params["spec"])


@job
def tiny_model(sm, params):
    from anogen.diffusion.tiny import build_tiny_model  # loads torch, which the light jobs need not

    spec = params["spec"]
    build_tiny_model(spec["family"], Path(sm.output.index).parent, seed=spec["seed"], resolution=spec["resolution"])


@job
def select_support(sm, params):
    spec, runtime = params["spec"], params["runtime"]
    build_support_set(
        runtime["data_root"],
        spec["category"],
        spec["defect"],
        shots=spec.get("shots"),  # named support files have neither shots nor seed
        seed=spec.get("seed"),
        files=spec["files"],
        origin=runtime["origin"],
        out_dir=_out_dir(sm),
        key=sm.wildcards.key,
        inputs=params["inputs"],
        layout=runtime["dataset"],
        spec=spec,
    )


# ----------------------------------------------------------------------------- stage 1


@job
def learn_embedding(sm, params):
    from anogen.embedding import learn_embedding as run  # loads torch, which the light jobs need not

    spec, runtime = params["spec"], params["runtime"]
    items = _support_pairs(sm, spec["resize"])
    with _device() as lease:
        run(
            support_items=items,
            model=runtime["model"],
            revision=runtime["revision"],
            model_options=runtime["model_options"],
            spec=spec,
            out_dir=_out_dir(sm),
            key=sm.wildcards.key,
            inputs=params["inputs"],
            device=lease.device,
            checkpoint_every=runtime["checkpoint_every"],
            cuda_graph=runtime["cuda_graph"],
            gradient_checkpointing=runtime["gradient_checkpointing"],
            extra={"lease": lease.as_dict()},
        )


@job
def import_embedding(sm, params):
    from anogen.embedding.imported import import_authors_embedding  # loads torch (light jobs need not)

    # No device and no model: the vector is read from the authors' file and written out.
    import_authors_embedding(
        source=params["runtime"]["source"],
        spec=params["spec"],
        out_dir=_out_dir(sm),
        key=sm.wildcards.key,
        inputs=params["inputs"],
    )


# ----------------------------------------------------------------------------- stage 2


def _support_pairs(sm, resize: str):
    """The job's support set (``input.support``) as squared (image, mask) pairs."""
    where = _one(sm.input.support)
    return _squared(read_support_set(where), resize, where)


def _squared(pairs, resize: str, where: str):
    """Support (image, mask) pairs through the ``resize`` geometry (models square them next)."""
    out = [square_pair(image, mask, resize) for image, mask in pairs]
    for i, (_, mask) in enumerate(out):
        if not mask.any():  # only crop can do this: the anomaly lies in a dropped strip
            raise DataError(
                where,
                f"support item {i}: its anomaly lies entirely outside the centre square "
                f"kept by resize: {resize}; use resize: pad or squash, or another support.seed",
            )
    return out


def _train_images(runtime: dict, category: str, limit: int | None = None) -> list[Path]:
    # Only what training reads: a broken test image or mask fails the jobs that use the test
    # set (support selection, evaluation), not every stage of the category.
    images = scan_category(runtime["data_root"], category, runtime["dataset"], defects=()).train_good
    return images[:limit] if limit else images


@job
def estimate_foreground(sm, params):
    from anogen.generation.foreground import build_foreground_set  # loads cv2 (light jobs need not)

    spec, runtime = params["spec"], params["runtime"]
    template = spec["foreground_template"]
    build_foreground_set(
        image_paths=_train_images(runtime, spec["category"], spec["max_normal_images"]),
        data_root=Path(runtime["data_root"]),
        texture=spec["texture"],
        template=Path(template) if template else None,
        iterations=spec["grabcut_iterations"],
        out_dir=_out_dir(sm),
        key=sm.wildcards.key,
        inputs=params["inputs"],
        spec=spec,
        method=spec["method"],
    )


@job
def generate_anomalies(sm, params):
    from anogen.generation.run import generate_anomalies as run  # loads torch (light jobs need not)

    spec, runtime = params["spec"], params["runtime"]
    pairs = _support_pairs(sm, spec["resize"])  # the montage's row 1; a learned box range's masks
    # A defect with a box template has no foreground input (the template replaces it).
    foreground = list(getattr(sm.input, "foreground", []) or [])
    with _device() as lease:
        run(
            normal_images=_train_images(runtime, spec["category"], spec["max_normal_images"]),
            data_root=Path(runtime["data_root"]),
            foreground_manifest=Path(_one(foreground)) if foreground else None,
            template=Path(runtime["template"]) if runtime["template"] else None,
            embedding_path=Path(_one(sm.input.embedding)),
            model=runtime["model"],
            revision=runtime["revision"],
            model_options=runtime["model_options"],
            spec=spec,
            out_dir=_out_dir(sm),
            key=sm.wildcards.key,
            inputs=params["inputs"],
            device=lease.device,
            batch_size=runtime["batch_size"],
            channels_last=runtime["channels_last"],
            compile=runtime["compile"],
            support_images=[image for image, _ in pairs],
            support_masks=[mask for _, mask in pairs],
            extra={"lease": lease.as_dict()},
        )


@job
def export_generated(sm, params):
    export.export_generated([Path(p) for p in sm.input.generated], Path(sm.output.marker).parent, params["spec"])


# ----------------------------------------------------------------------------- stage 3


@job
def train_detector(sm, params):
    from anogen.detectors import train_detector as run  # loads torch (light jobs need not)

    spec, runtime = params["spec"], params["runtime"]
    with _device() as lease:
        run(
            spec=spec,
            train_images=_train_images(runtime, spec["category"]),
            generated_manifests=[Path(p) for p in sm.input.generated],
            out_dir=_out_dir(sm),
            key=sm.wildcards.key,
            inputs=params["inputs"],
            device=lease.device,
            checkpoint_every=runtime["checkpoint_every"],
            extra={"lease": lease.as_dict()},
            data_root=runtime["data_root"],
            texture_source=runtime["texture_source"],
            teacher_weights=runtime["teacher_weights"],
        )


@job
def evaluate_detector(sm, params):
    from anogen.detectors import load_trained_detector  # loads torch (light jobs need not)
    from anogen.evaluation.evaluate import evaluate_detector as run  # loads torch (light jobs need not)

    spec, runtime = params["spec"], params["runtime"]
    detector_dir = Path(_one(sm.input.detector)).parent
    # The detector's loss curves first, so that the evaluation manifest (written last) lists them.
    loss_plot = Path(sm.output.loss_plot)
    plot_detector_training(detector_dir, loss_plot)
    with _device() as lease:
        run(
            predictor=load_trained_detector(detector_dir, device=lease.device),
            test_items=scan_category(runtime["data_root"], spec["category"], runtime["dataset"]).test,
            data_root=Path(runtime["data_root"]),
            spec=spec,
            out_dir=_out_dir(sm),
            key=sm.wildcards.key,
            inputs=params["inputs"],
            batch_size=runtime["batch_size"],
            extra={"lease": lease.as_dict()},
            extra_files=[loss_plot.relative_to(_out_dir(sm)).as_posix()],
        )


@job
def summarize(sm, params):
    summary.summarize([Path(p) for p in sm.input.metrics], Path(sm.output.summary), Path(sm.output.table1))
    write_report_items(
        sm.output.summary,
        sm.output.table1,
        summary_html_path=sm.output.summary_html,
        table1_html_path=sm.output.table1_html,
        comparison_png=sm.output.comparison,
        notes_html_path=sm.output.notes,
    )


@job
def study_table(sm, params):
    """One study's table.csv, plot.png and section.html from its arms' evaluations."""
    write_study(params["study"], Path(sm.output.table).parent)


# ----------------------------------------------------------------------------- generation quality


@job
def generation_quality(sm, params):
    spec, runtime = params["spec"], params["runtime"]
    root = Path(runtime["data_root"])
    index = scan_category(root, spec["category"], runtime["dataset"], defects=(spec["defect"],))
    with _device() as lease:
        quality_run.generation_quality(
            spec=spec,
            generated_manifest=Path(_one(sm.input.generation)),
            support_manifest=Path(_one(sm.input.support)),
            test_items=index.test,
            data_root=root,
            weights={"inception": runtime["inception_weights"], "lpips": runtime["lpips_weights"]},
            out_dir=_out_dir(sm),
            key=sm.wildcards.key,
            inputs=params["inputs"],
            device=lease.device,
            batch_size=runtime["batch_size"],
        )


@job
def quality_table(sm, params):
    quality_run.write_quality_table([Path(p) for p in sm.input.quality], Path(sm.output.csv), Path(sm.output.html))
