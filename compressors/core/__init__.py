"""Core types: what a worker sends (``Payload``, ``PartSpec``), the round it sends in (``Round``),
the ``Compressor`` and ``Mechanism`` contracts and the three-point-compressor base."""
