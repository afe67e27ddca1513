"""vpnoffload: serve chosen ports of a small VPS from a stronger machine at home over OpenVPN."""

__version__ = "0.1.0"
