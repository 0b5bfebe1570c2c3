"""Training data: phantom simulators, adapters for real datasets, text tools."""
