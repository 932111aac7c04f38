"""Data: Fashion-MNIST files and loaders."""
