"""Generation quality as the anomaly-generation papers report it: IS, KID and IC-LPIPS.

``metrics`` (the three metrics on whole images and box crops, through torch-fidelity and lpips),
``networks`` (the feature networks from user-given weight files; never downloaded), ``table``
(``generation_quality.csv`` and its report page, with the peers' published means) and ``run``
(one keyed generated set in the workflow, or any folder of images for ``anogen quality``).
"""
