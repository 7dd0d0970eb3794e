"""The accuracy suite (``python -m benchmarks.accuracy``): threepc hooks against DDP's allreduce
on unsaturated tasks under the recipes users train with. Modules: ``tasks``, ``recipes``,
``runner``, ``report``, ``experimental`` (correction candidates, not in the library)."""
