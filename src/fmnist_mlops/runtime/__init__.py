"""Process plumbing every layer uses.

Errors, entry-point wrapping, paths and atomic writes, run owners, checked folders.
"""
