"""The watchdog's decisions: fall/rise counting, swaps both ways, warm-up, restarts."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from vpnoffload.errors import BackendError
from vpnoffload.health import Result
from vpnoffload.model import Config, Home, Service, Tunnel, Vps, Watch
from vpnoffload.watchdog import Watchdog


def config(fall: int = 2, rise: int = 2) -> Config:
    return Config(
        vps=Vps(IPv4Address("203.0.113.10")),
        tunnel=Tunnel(IPv4Network("198.51.100.0/24")),
        homes={"home": Home("home", IPv4Address("198.51.100.2"))},
        services={
            "web": Service("web", IPv4Address("203.0.113.10"), 80, "home", 8080, fallback="page"),
            "git": Service("git", IPv4Address("203.0.113.10"), 22, "home", 2222),
        },
        watch=Watch(fall=fall, rise=rise),
    )


class Swapper:
    def __init__(self) -> None:
        self.calls: list[tuple[frozenset[str], frozenset[str]]] = []
        self.prepared = 0
        self.cancelled = 0
        self.fail = False

    def __call__(self, fallback: frozenset[str], changed: frozenset[str]) -> None:
        if self.fail:
            raise BackendError("iptables: locked")
        self.calls.append((fallback, changed))

    def prepare(self) -> None:
        self.prepared += 1

    def cancel(self) -> None:
        self.cancelled += 1


def prober(verdicts: dict[str, str]):
    def probe(svc: Service, cfg: Config) -> Result:
        return Result(verdicts[svc.name], 0.01, verdicts[svc.name])  # type: ignore[arg-type]
    return probe


def test_start_reconciles_with_real_health_at_once() -> None:
    health = {"web": "down", "git": "up"}
    swap = Swapper()
    dog = Watchdog(config(), swap, prober(health))
    dog.start(initial={"git"})  # a watchdog restarted mid-outage had git on fallback
    assert swap.calls == [(frozenset({"web"}), frozenset({"web", "git"}))]
    assert dog.fallback() == {"web"}


def test_fall_and_rise_count_in_a_row() -> None:
    health = {"web": "up", "git": "up"}
    swap = Swapper()
    dog = Watchdog(config(fall=2, rise=3), swap, prober(health))
    dog.start()
    swap.calls.clear()
    health["web"] = "down"
    assert dog.tick() == frozenset() and swap.prepared == 1  # first failure: warm the swapper up
    health["web"] = "up"
    assert dog.tick() == frozenset() and swap.cancelled == 1  # a blip: counters reset
    health["web"] = "down"
    dog.tick()
    assert dog.tick() == {"web"}
    assert swap.calls == [(frozenset({"web"}), frozenset({"web"}))]
    health["web"] = "up"
    assert dog.tick() == frozenset() and dog.tick() == frozenset()
    assert dog.tick() == {"web"}
    assert swap.calls[-1] == (frozenset(), frozenset({"web"}))
    assert dog.status["web"].swaps == 2 and dog.status["web"].state == "forwarding"


def test_slow_counts_as_alive() -> None:
    health = {"web": "up", "git": "up"}
    swap = Swapper()
    dog = Watchdog(config(fall=1), swap, prober(health))
    dog.start()
    health["web"] = "slow"
    assert dog.tick() == frozenset() and dog.fallback() == frozenset()


def test_failed_swap_keeps_state_and_retries() -> None:
    health = {"web": "up", "git": "up"}
    swap = Swapper()
    dog = Watchdog(config(fall=1), swap, prober(health))
    dog.start()
    health["git"] = "down"
    swap.fail = True
    with pytest.raises(BackendError):
        dog.tick()
    assert dog.status["git"].state == "forwarding"
    swap.fail = False
    assert dog.tick() == {"git"} and dog.fallback() == {"git"}


def test_snapshot_is_json_ready() -> None:
    import json

    dog = Watchdog(config(), Swapper(), prober({"web": "up", "git": "down"}), clock=lambda: 1000.0)
    dog.start()
    data = json.loads(json.dumps(dog.snapshot()))
    states = {s["name"]: (s["state"], s["healthy"]) for s in data["services"]}
    assert states == {"web": ("forwarding", True), "git": ("fallback", False)}


def test_reconfigure_keeps_known_states_and_adds_new_services() -> None:
    health = {"web": "down", "git": "up", "mail": "up"}
    dog = Watchdog(config(), Swapper(), prober(health))
    dog.start()
    assert dog.fallback() == {"web"}
    new = config()
    services = dict(new.services)
    del services["git"]
    services["mail"] = Service("mail", IPv4Address("203.0.113.10"), 25, "home", 2525)
    dog.reconfigure(Config(vps=new.vps, tunnel=new.tunnel, homes=new.homes, services=services, watch=new.watch))
    assert set(dog.status) == {"web", "mail"} and dog.fallback() == {"web"}
    assert dog.status["mail"].state == "forwarding"
