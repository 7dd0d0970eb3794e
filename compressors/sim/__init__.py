"""The simulation harness: n workers and their aggregate in one process, finite-sum problems,
the 3PC theory's constants and stepsizes, and data sets."""
