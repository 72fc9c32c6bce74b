"""Model export: fit or train PyTorch models and write edge model packages."""
