"""Data layer: MVTec AD layout (mvtec), few-shot support sets (support), offline demo set (demo)."""

from anogen.data.mvtec import (
    GOOD,
    IMAGE_EXTENSIONS,
    CategoryIndex,
    TestItem,
    list_categories,
    list_defects,
    load_image,
    load_mask,
    scan_category,
)

__all__ = [
    "GOOD",
    "IMAGE_EXTENSIONS",
    "CategoryIndex",
    "TestItem",
    "list_categories",
    "list_defects",
    "load_image",
    "load_mask",
    "scan_category",
]
