"""The core: experiment specs, data, models, masks, pruning, the training loop, files.
Imports nothing from lotto.methods, lotto.outputs or the jobs (tests/test_imports.py)."""
