"""Studies: the paper's ablations as arms of one workflow, and what each study writes.

``planner`` makes the plans of a run's arms; ``table`` turns one study's evaluations into its
table, plot and report section, beside the numbers the paper prints
(``anogen.evaluation.paper_numbers``, which the report reads too).
"""
