"""Benchmarks (`make bench`): what the daemon costs next to the model, measured as ratios in one run."""
