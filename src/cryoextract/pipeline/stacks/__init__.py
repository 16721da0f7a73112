"""The particle-stack wing: commands that read particles someone already extracted.

``restack`` and ``downsample`` (:mod:`.restack`), ``subtract`` and ``subtract --revert``
(:mod:`.subtract`, :mod:`.revert`), ``select`` (:mod:`.select`). Each reads its particles
through :mod:`cryoextract.io.particles`, re-centres with :mod:`cryoextract.ops.recenter`
and runs in the shared job frame (:mod:`cryoextract.pipeline.frame` for the output
folder and its lock, :mod:`.common` for what the stack commands share: rejected rows,
pixel sizes per optics group, output optics, the summary). A new particle-stack command
goes here, on the same pieces.
"""
