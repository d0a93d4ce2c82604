"""The experiment tools built on the library: the report (tables, rank curves, the finding),
the paper's numbers, reproduction plans, the search-cost experiment and the benchmarks.

The library (``dylora.adapters``, ``dylora.train``, ``dylora.sweep``, ``dylora.tasks``, ...) never
imports from here.
"""
