"""The ``anogen`` commands, one module each, above the plan (floor 5 of docs/architecture.md).

Each module has ``run(args) -> int`` (the parsed command line of ``anogen.cli``, the exit status)
and the few functions that only that command needs; the checks and computations they report on
live in the library below: ``keys`` / ``gc`` (the keyed directories of a run), ``estimate``
(``anogen.estimate``), ``check_data`` (``anogen.data.check`` and ``anogen.generation.check``),
``box_ranges`` (``anogen.data.box_ranges``), ``preflight`` (every check a run needs from outside
the project, ``check_data`` and ``estimate`` among them) and ``quality`` (``anogen.quality.run``).
"""
