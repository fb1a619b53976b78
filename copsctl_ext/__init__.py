"""Compiled kernels of copsctl (Cython)."""
