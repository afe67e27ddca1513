"""The host's own firewall (Docker, ufw, nftables, firewalld-shaped rulesets): the openings vpnoffload needs through it."""
