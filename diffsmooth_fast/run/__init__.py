"""The ``diffsmooth-fast`` application: the command line (``cli``), its settings (``configs``), the run loop
(``runner``, ``build``), output files and resume (``tsv``, ``resume``, ``atomic``), torchrun (``distributed``), progress,
errors and ``analyze``."""
