"""Benchmarks that ship with the package, behind ``diffsmooth-fast bench``: the fused ops (``ops``) and, with
full-size random-weight models, end-to-end certification against a paper-style baseline (``e2e``)."""
