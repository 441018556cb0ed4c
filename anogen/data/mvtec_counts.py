"""MVTec AD in numbers: the published file counts per category and defect type.

Used where the real data set is not at hand: planning benchmarks and tests build a fake tree
with these names and counts, and ``anogen estimate`` projects run times from them.
"""

# category: (train/good, test/good, {defect: n_test})
MVTEC_AD_COUNTS = {
    "bottle": (209, 20, {"broken_large": 20, "broken_small": 22, "contamination": 21}),
    "cable": (
        224,
        58,
        {
            "bent_wire": 13,
            "cable_swap": 12,
            "combined": 11,
            "cut_inner_insulation": 14,
            "cut_outer_insulation": 10,
            "missing_cable": 12,
            "missing_wire": 10,
            "poke_insulation": 10,
        },
    ),
    "capsule": (219, 23, {"crack": 23, "faulty_imprint": 22, "poke": 21, "scratch": 23, "squeeze": 20}),
    "carpet": (280, 28, {"color": 19, "cut": 17, "hole": 17, "metal_contamination": 17, "thread": 19}),
    "grid": (264, 21, {"bent": 12, "broken": 12, "glue": 11, "metal_contamination": 11, "thread": 11}),
    "hazelnut": (391, 40, {"crack": 18, "cut": 17, "hole": 18, "print": 17}),
    "leather": (245, 32, {"color": 19, "cut": 19, "fold": 17, "glue": 19, "poke": 18}),
    "metal_nut": (220, 22, {"bent": 25, "color": 22, "flip": 23, "scratch": 23}),
    "pill": (
        267,
        26,
        {
            "color": 25,
            "combined": 17,
            "contamination": 21,
            "crack": 26,
            "faulty_imprint": 19,
            "pill_type": 9,
            "scratch": 24,
        },
    ),
    "screw": (
        320,
        41,
        {"manipulated_front": 24, "scratch_head": 24, "scratch_neck": 25, "thread_side": 23, "thread_top": 23},
    ),
    "tile": (230, 33, {"crack": 17, "glue_strip": 18, "gray_stroke": 16, "oil": 18, "rough": 15}),
    "toothbrush": (60, 12, {"defective": 30}),
    "transistor": (213, 60, {"bent_lead": 10, "cut_lead": 10, "damaged_case": 10, "misplaced": 10}),
    "wood": (247, 19, {"color": 8, "combined": 11, "hole": 10, "liquid": 10, "scratch": 21}),
    "zipper": (
        240,
        32,
        {
            "broken_teeth": 19,
            "combined": 16,
            "fabric_border": 17,
            "fabric_interior": 16,
            "rough": 17,
            "split_teeth": 18,
            "squeezed_teeth": 16,
        },
    ),
}
