"""MedSynth Factory: train medical generators on Ray, mass-produce labelled synthetic data as WebDataset shards."""

__version__ = "0.1.0"
