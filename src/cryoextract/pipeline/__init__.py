"""Jobs: the typed parameters, the per-micrograph or per-batch work, and its orchestration.

Two wings on one job frame:

- :mod:`.extraction`: ``extract`` (and ``--watch``), particles boxed out of micrographs;
- :mod:`.stacks`: the particle-stack commands (``restack``, ``downsample``, ``subtract``
  and its ``--revert``, ``select``) on particles already extracted.

Shared by both: :mod:`.frame` (the output folder's lock, claiming it, where a job writes:
``JobPaths``, atomic summary and rejected rows), :mod:`.selection` (pick filters and the
``--where`` condition of ``select``) and :mod:`.allocator` (the C allocator's settings in
workers). :mod:`.convert` is the ``convert`` job (pick files from one format to another).
"""
