"""One module per pick format: a reader returning the picks table and a writer.

The picks table is a ``pandas.DataFrame`` with ``rlnCoordinateX``/``rlnCoordinateY``
(float64, 0-based pixel coordinates of the particle centre in the micrograph) and every
other input column, under its RELION name where one exists (docs/conventions.md,
"Pick and CTF formats"). Every format is one record in
:mod:`cryoextract.io.pickformats.registry`, the one place a format is added;
``cryoextract.io.coords.read_picks`` chooses the reader from it.
"""
