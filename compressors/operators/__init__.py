"""Stateless compression operators: sparsifiers (Top-K, Rand-K, Perm-K, their composition), the
identity, scaled signs, and float formats and quantizers."""
