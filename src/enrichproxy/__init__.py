"""enrichproxy: a Prometheus remote-write proxy that enriches series from a live MongoDB table
and reshapes them into aggregated views.

One subpackage per stage, each importing only from the ones before it (tests/test_layers.py)::

    errors, model → wire → config → metadata.table → engine
          → metadata, durability → forward → server → tools → cli

``wire``, ``config``, ``metadata.table`` and ``engine`` are the pure core: bytes and values in,
values out. The rest are the shells that do the I/O, and the wiring.
"""

__version__ = "0.1.0"
