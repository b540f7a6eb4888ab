"""enrichproxy: a Prometheus remote-write proxy that enriches series from a live MongoDB table
and reshapes them into aggregated views.

Data flow, one module per stage::

    codec → config/selector → metadata_table/metadata_store → enrich → views → aggregation
          → pipeline → forwarder → app → cli
"""

__version__ = "0.1.0"
