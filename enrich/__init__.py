"""enrich: SMS/MMS enrichment server on trio."""

__version__ = "0.1.0"
