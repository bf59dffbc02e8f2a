"""anogen's benchmark: ``python -m bench`` measures speed, memory and quality and writes docs/benchmarks.md."""
