"""EventIndex: the event catalogue of the SPD experiment at NICA."""

__version__ = "0.1.0"
