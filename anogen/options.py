"""The run's config options, ``--configfile`` and ``--config``, with Snakemake's meaning.

Every ``anogen`` command that reads a config takes them as ``snakemake`` does, so a command line
copied from a run gives the command the config the workflow sees:
``anogen preflight --configfile config/mvtec.yaml local.yaml --config data_root=...`` checks the
run that ``snakemake ... --configfile config/mvtec.yaml local.yaml --config data_root=...``
starts. Snakemake 9 builds its ``config`` so (``ConfigSettings`` in snakemake/settings/types.py,
``parse_config`` in snakemake/cli.py, ``update_config`` in snakemake/utils.py):

- each ``--configfile``, in order, is read (JSON, else YAML; an empty file is refused) and merged
  into the ones before by a recursive update: mappings merge key by key, any other value replaces;
- then each ``--config KEY=VALUE`` the same way, as ``{KEY: value}``. KEY is a top-level key
  (``[a-zA-Z_][\\w-]*\\w``: a dotted ``quality.image_size`` is refused); the value loses
  surrounding quotes and is read as an int, else a float, else ``True``/``False``, else YAML with
  every scalar a string (``"generation={'batch_size': 4}"`` gives the string ``'4'``, which the
  schema then refuses), else kept as text; an empty value is null. A mapping merges into its
  section as a file would;
- without ``--configfile`` the Snakefile reads ``config/config.yaml`` (the offline demo) and the
  ``--config`` values go over it.

``validated_run_config`` is the workflow's next step (workflow/rules/common.smk calls it):
``extends:`` resolved, the schema's defaults and checks, and the refusal of the demo's config
for other data. The files are read and merged by Snakemake's own functions; ``--config`` is
parsed here (importing snakemake.cli costs a second and a half), as its ``parse_config`` does.

A repeated ``--configfile`` or ``--config`` is refused: Snakemake keeps only the last one, which
silently drops the files or values given first.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
from collections.abc import Sequence
from pathlib import Path

import yaml

from anogen.config import resolve_extends, validate_config
from anogen.errors import AnogenError, ConfigError, DataError

# Read by the Snakefile when no --configfile is given (the offline demo), relative to the
# working directory; the commands here do the same.
DEMO_CONFIG = "config/config.yaml"
# snakemake/cli.py parse_config: the names --config accepts (top-level keys, two characters or more)
_KEY = re.compile(r"[a-zA-Z_][\w-]*\w$")


class OptionError(AnogenError):
    """A command-line option's item is malformed; the message names the option and the item."""

    def __init__(self, option: str, item: str, problem: str):
        super().__init__(f"{option} {item!r}: {problem}")


# ----------------------------------------------------------------------------- Snakemake's config


def read_configfiles(paths: Sequence[str | Path]) -> dict:
    """The config files merged in order, as Snakemake merges its ``--configfile`` list."""
    from snakemake.common.configfile import load_configfile
    from snakemake.utils import update_config
    from snakemake_interface_common.exceptions import WorkflowError

    merged: dict = {}
    for path in paths:
        if not Path(path).is_file():
            raise DataError(path, "config file (--configfile) does not exist")
        try:
            update_config(merged, load_configfile(str(path)))
        except WorkflowError as exc:
            raise DataError(path, f"not a usable config file (--configfile): {exc}") from None
    return merged


def parse_config_items(items: Sequence[str]) -> dict:
    """``--config KEY=VALUE ...`` as Snakemake reads them (see the module docstring)."""
    from snakemake.utils import update_config

    config: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            raise OptionError("--config", item, "is not KEY=VALUE (for example data_root=/path/to/data)")
        if not _KEY.match(key):
            hint = (
                ": --config sets top-level keys only, as in snakemake; put nested values in a small YAML "
                "file given after the main config (--configfile config/mvtec.yaml local.yaml)"
                if "." in key
                else ""
            )
            raise OptionError("--config", item, f"{key!r} is not a top-level config key{hint}")
        update_config(config, {key: _config_value(item, text.strip("'\""))})
    return config


def _yaml_of_strings(text: str):
    """YAML read with the base loader, as Snakemake reads a --config value: every scalar a string,
    no object constructed (what ``yaml.load(text, Loader=yaml.BaseLoader)`` does)."""
    loader = yaml.BaseLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _config_value(item: str, text: str):
    """Snakemake's reading of a --config value: int, float, True/False, YAML of strings, text."""
    if text == "":
        return None
    for parse in (int, float, _true_or_false, _yaml_of_strings):
        try:
            value = parse(text)
        except Exception:  # what Snakemake does: the next reading is tried
            continue
        if value is None:  # YAML of a comment or blanks; Snakemake stops on it with an AssertionError
            raise OptionError("--config", item, "the value is empty as YAML (quote it, or give it in a file)")
        return value
    return text


def _true_or_false(text: str) -> bool:
    if text in ("True", "False"):
        return text == "True"
    raise ValueError(text)


def snakemake_config(configfiles: Sequence[str | Path], items: Sequence[str], *, no_file: dict | None = None) -> dict:
    """The ``config`` Snakemake hands the Snakefile for these options, before the workflow's checks.

    Without config files: the demo's, as the Snakefile reads it, or ``no_file`` where given."""
    from snakemake.utils import update_config

    if configfiles or no_file is None:
        config = read_configfiles(configfiles or [DEMO_CONFIG])
    else:
        config = copy.deepcopy(no_file)
    update_config(config, parse_config_items(items))
    return config


# ----------------------------------------------------------------------------- the workflow's step


def validated_run_config(raw: dict, *, demo_default: bool = False) -> dict:
    """What the workflow makes of Snakemake's ``config`` (workflow/rules/common.smk calls this).

    ``extends:`` is resolved, then the schema fills the defaults and checks every value.
    ``demo_default``: the config is the demo's, read because no ``--configfile`` was given; its
    random tiny model and demo budgets must not run on other data, so that stops.
    """
    config = validate_config(resolve_extends(raw))
    if demo_default and os.path.normpath(config["data_root"]) != os.path.normpath(config["demo"]["root"]):
        raise ConfigError(
            "data_root",
            f"{config['data_root']!r} was given without --configfile, so the offline demo's config "
            f"({DEMO_CONFIG}: a random tiny model, demo budgets) would run on it. Give the run's config: "
            "--configfile config/mvtec.yaml --config data_root=... (or your own config file)",
        )
    return config


def run_config(configfiles: Sequence[str | Path], items: Sequence[str]) -> dict:
    """The validated config of a run given as ``--configfile FILE... --config KEY=VALUE...``."""
    return validated_run_config(snakemake_config(configfiles, items), demo_default=not configfiles)


# ----------------------------------------------------------------------------- argparse


class _Once(argparse.Action):
    """Store the option's words; a second occurrence is an error (Snakemake would drop the first)."""

    def __init__(self, *args, hint: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.hint = hint

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest) is not None:
            words = "file" if self.dest == "configfile" else "KEY=VALUE"
            parser.error(
                f"{option_string} given twice: snakemake would keep only the last one; give every {words} "
                f"after one {option_string}{self.hint}"
            )
        setattr(namespace, self.dest, values)


def add_run_options(parser: argparse.ArgumentParser, *, configfile_help: str | None = None, hint: str = "") -> None:
    """``--configfile`` (``--configfiles``) and ``--config`` (``-C``), as ``snakemake`` takes them.

    ``hint`` ends the message that refuses a repeated option (gc: how to give another run)."""
    parser.add_argument(
        "--configfile",
        "--configfiles",
        nargs="+",
        action=_Once,
        hint=hint,
        default=None,
        metavar="FILE",
        help=configfile_help
        or f"the run's config file(s), as for snakemake: each merges over the ones before (default: {DEMO_CONFIG})",
    )
    parser.add_argument(
        "--config",
        "-C",
        nargs="*",
        action=_Once,
        hint=hint,
        default=None,
        metavar="KEY=VALUE",
        help="top-level config values over the files, read as snakemake's --config reads them (data_root=/data)",
    )


def parse_set_items(items: Sequence[str]) -> dict:
    """``--set key.sub=value ...`` (``anogen quality``): nested values, each read as YAML."""
    import yaml

    out: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise OptionError("--set", item, "is not key.sub=VALUE (for example quality.image_size=256)")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise OptionError("--set", item, f"an earlier --set item gave {part!r} a value that is not a section")
        node[parts[-1]] = yaml.safe_load(text)
    return out


def config_of_args(args: argparse.Namespace) -> dict:
    """The validated config of a command's ``--configfile`` / ``--config`` (``add_run_options``)."""
    return run_config(args.configfile or [], args.config or [])
