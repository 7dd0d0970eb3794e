"""threepc's version: the one string that pyproject.toml, compressors and ddp_hooks read."""
__version__ = "0.1.0"
