"""Side-by-side benchmarks of MOD-GPT's design against the DSTC10 baseline's way: `python -m benchmarks`."""
