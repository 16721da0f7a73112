"""The extraction wing: boxing particles out of micrographs (``extract``, ``--watch``).

:mod:`.extract` (``extract``, ``prepare_job``) reads the inputs, checks them
(:mod:`.checks`, :mod:`.helical`), plans one task per micrograph (:mod:`.plan`), runs the
tasks (:mod:`.executors`: serial, processes or Dask, with :mod:`.dask_plugin`;
:mod:`.thumbnail_gate` for the report) and writes the job's files (:mod:`.outputs`);
:mod:`.watch` does the same for micrographs as they arrive, and :mod:`.jobstate` records
finished micrographs so that ``--resume`` redoes only the rest. :mod:`.params` holds the
typed records carried from the CLI to the task (``ExtractParams``, ``HelixParams``,
``OutputSpec``, ``PickTransform``). One micrograph is :mod:`.task`: picks placed on the
micrograph (:mod:`.positions`, :mod:`.subparticles`, :mod:`.helical`), filtered
(:mod:`cryoextract.pipeline.selection`), boxed and written with the pure array functions of
:mod:`cryoextract.ops`.

A new per-particle extraction step goes into :mod:`.task` as a call to a new ``ops/``
function, with its option in :class:`.params.ExtractParams`; a new per-job step (read or
checked once before the tasks) goes into :mod:`.extract` or :mod:`.plan`. The job frame
(lock, output folder, :class:`~cryoextract.pipeline.frame.JobPaths`) is shared with the
particle-stack wing, :mod:`cryoextract.pipeline.stacks`. Nothing is imported here, so that
``import cryoextract`` stays light.
"""
