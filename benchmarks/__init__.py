"""Speed benchmarks: `python -m benchmarks.<name> --out=results.json`. Each prints a table."""
