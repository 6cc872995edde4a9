"""Paper-specific methods built on the core (Early-Bird, channel pruning, FLOPs,
Training Optimal Masks). Import only lotto.core and each other."""
