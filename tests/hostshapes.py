"""Host firewalls as the real thing writes them, for the lab VPS (and home) of the e2e tests.

- ``DOCKER``: what dockerd (20.10, Debian 12's docker.io) writes with
  iptables-nft on start, fed to ``iptables-nft-restore`` (a Docker restart
  replays the same, which flushes DOCKER-USER);
- ``NFTABLES``: a Debian ``/etc/nftables.conf`` with ``policy drop`` on input
  and forward, loaded (and reloaded) with ``nft -f``;
- ``FIREWALLD``: the table firewalld >= 1.0 builds with its nftables backend
  (public zone, ssh only; DNATed traffic only through explicit forward ports,
  else rejected; see firewalld's src/firewall/core/nftables.py), loaded with
  ``nft -f`` the way a ``firewall-cmd --reload`` rewrites it;
- ufw is the real ufw (tests/e2e/test_host_firewalls.py enables it).

The Docker bridge gets a TEST-NET-3 subnet, as ENVIRONMENT.md asks.
"""

from __future__ import annotations

DOCKER_BRIDGE = "docker0"
DOCKER_SUBNET = "203.0.113.128/25"

def docker(bridge: str = DOCKER_BRIDGE, subnet: str = DOCKER_SUBNET,
           published: tuple[tuple[int, str, int], ...] = ()) -> str:
    """dockerd's iptables-nft rules for one bridge, with ``(host port, container, container port)``
    for each published TCP port (``docker run -p 8080:80``), as iptables-nft-restore input."""
    nat = "".join(f"-A POSTROUTING -s {c}/32 -d {c}/32 -p tcp -m tcp --dport {inside} -j MASQUERADE\n"
                  for _, c, inside in published)
    dnat = "".join(f"-A DOCKER ! -i {bridge} -p tcp -m tcp --dport {port} -j DNAT --to-destination {c}:{inside}\n"
                   for port, c, inside in published)
    accept = "".join(f"-A DOCKER -d {c}/32 ! -i {bridge} -o {bridge} -p tcp -m tcp --dport {inside} -j ACCEPT\n"
                     for _, c, inside in published)
    return f"""*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s {subnet} ! -o {bridge} -j MASQUERADE
{nat}-A DOCKER -i {bridge} -j RETURN
{dnat}COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o {bridge} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o {bridge} -j DOCKER
-A FORWARD -i {bridge} ! -o {bridge} -j ACCEPT
-A FORWARD -i {bridge} -o {bridge} -j ACCEPT
{accept}-A DOCKER-ISOLATION-STAGE-1 -i {bridge} ! -o {bridge} -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o {bridge} -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
COMMIT
"""


DOCKER = docker()

NFTABLES = """flush ruleset

table inet filter {
	chain input {
		type filter hook input priority filter; policy drop;
		ct state established,related accept
		ct state invalid drop
		iif "lo" accept
		meta l4proto { icmp, ipv6-icmp } accept
		tcp dport 22 accept
	}

	chain forward {
		type filter hook forward priority filter; policy drop;
	}

	chain output {
		type filter hook output priority filter; policy accept;
	}
}
"""

FIREWALLD = """table inet firewalld
delete table inet firewalld
table inet firewalld {
	chain filter_PREROUTING {
		type filter hook prerouting priority filter + 10; policy accept;
	}

	chain filter_INPUT {
		type filter hook input priority filter + 10; policy accept;
		ct state { established, related } accept
		ct status dnat jump filter_INPUT_dnat
		iifname "lo" accept
		ct state invalid drop
		jump filter_INPUT_dispatch
		reject with icmpx admin-prohibited
	}

	chain filter_FORWARD {
		type filter hook forward priority filter + 10; policy accept;
		ct state { established, related } accept
		ct status dnat jump filter_FORWARD_dnat
		iifname "lo" accept
		ct state invalid drop
		jump filter_FORWARD_dispatch
		reject with icmpx admin-prohibited
	}

	chain filter_OUTPUT {
		type filter hook output priority filter + 10; policy accept;
		ct state { established, related } accept
		oifname "lo" accept
	}

	chain filter_INPUT_dnat {
		reject with icmpx admin-prohibited
	}

	chain filter_FORWARD_dnat {
		reject with icmpx admin-prohibited
	}

	chain filter_INPUT_dispatch {
		goto filter_IN_public
	}

	chain filter_FORWARD_dispatch {
		goto filter_FWD_public
	}

	chain filter_IN_public {
		meta l4proto { icmp, ipv6-icmp } accept
		tcp dport 22 ct state { new, untracked } accept
	}

	chain filter_FWD_public {
	}
}
"""
