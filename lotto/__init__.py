"""lotto: lottery-ticket pruning research as a cached, resumable Snakemake workflow."""

__version__ = "0.1.0"
