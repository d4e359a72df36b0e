"""Benchmarks (``make bench``). Each module has ``main(argv) -> int`` and prints ratios
measured side by side in one run; results go to ``bench/results/``. Nothing in the product
imports this package."""
