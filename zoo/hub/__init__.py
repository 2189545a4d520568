"""The zoo's hub: model cards, the registry of built-in and user cards, checksummed downloads into the cache."""
