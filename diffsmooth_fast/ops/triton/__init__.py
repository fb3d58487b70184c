"""Triton kernels. Importing this package imports triton; the dispatcher does so only when asked."""
