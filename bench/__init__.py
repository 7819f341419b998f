"""Speed benchmarks of emseg (issue 6): run `python bench/run.py`; results go to BENCHMARKS.md."""
