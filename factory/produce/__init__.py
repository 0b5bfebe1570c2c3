"""Production: samples into WebDataset shards on object storage, exactly once, with a manifest."""
