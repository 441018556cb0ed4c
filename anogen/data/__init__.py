"""Data layer: the data set's layouts (layouts/, one module each), what they return (index) and
image files (images), few-shot support sets (support), data fingerprints for the content keys
(fingerprint), the offline demo set (demo)."""
