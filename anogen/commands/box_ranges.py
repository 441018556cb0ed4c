"""``anogen box-ranges``: every planned defect's box range learned from its support masks, beside
the hand-set one (the comparison and the table: ``anogen.data.box_ranges``)."""

from __future__ import annotations

from pathlib import Path

from anogen.data.box_ranges import Row, handset_ranges, reference_from_file, render, support_masks, to_csv
from anogen.generation.boxes import learned_box_range
from anogen.options import config_of_args
from anogen.plan import Plan


def learn_all(config: dict, reference: dict | None = None) -> list[Row]:
    """A :class:`Row` per planned (category, defect): its learned range and the hand-set one."""
    plan = Plan(config)
    learned_cfg = config["generation"]["learned_box"]
    reference = handset_ranges(config) if reference is None else reference
    rows = []
    for category, defect in plan.pairs():
        masks = support_masks(plan, category, defect)
        where = f"support set of {category}/{defect}"
        learned = learned_box_range(masks, learned_cfg, learned_cfg["rotate"], where)
        rows.append(Row(category, defect, learned, reference.get((category, defect))))
    return rows


def run(args) -> int:
    config = config_of_args(args)
    rows = learn_all(config, reference_from_file(args.reference) if args.reference else None)
    print(render(rows))
    if args.csv:
        Path(args.csv).write_text(to_csv(rows), encoding="utf-8")
    return 0
