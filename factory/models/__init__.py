"""Generator networks, one module per paper, shared layers in blocks.py, bundles in bundle.py."""
