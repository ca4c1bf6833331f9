"""tunnelgate: a pay-per-use VPN gateway for mesh and community networks."""

__version__ = "0.1.0"
