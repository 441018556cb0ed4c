"""Stage 2: place boxes on normal images and inpaint the learned anomaly inside them.

Modules: ``foreground`` (GrabCut / Otsu / template masks, once per category), ``boxes``
(seeded box sampling), ``inpaint`` (blended latent diffusion, paper Eq. 7), ``planning`` (boxes and
seeds of a job), ``resume`` (its written files and progress record), ``run`` (the resumable
per-(category, defect) job), ``montage`` and ``export``. Submodules are imported
lazily so that importing this package does not load torch or diffusers.
"""
