"""Studies: the paper's ablations as arms of one workflow, and what each study writes.

``paper_numbers.yaml`` holds the numbers the paper prints (``paper`` loads them); ``table``
turns one study's evaluations into its table, plot and report section.
"""
