"""Time to accuracy on a shaped loopback: ``python -m benchmarks.e2e`` (issue 15)."""
