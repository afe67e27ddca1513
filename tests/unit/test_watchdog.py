"""The watchdog's decisions: fall/rise counting, swaps both ways, several home
boxes in order, warm-up of the swapper, restarts that cut nothing."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from tests.fakes import Swapper, prober
from tests.fakes import watchdog_config as config
from vpnoffload.errors import BackendError
from vpnoffload.lean.snapshot import ConfigView
from vpnoffload.model import Config, Service
from vpnoffload.watch.health import Result
from vpnoffload.watch.decide import Watchdog, believed_targets


def test_start_reconciles_and_flushes_only_what_moves() -> None:
    health = {"web": "down", "git": "up"}
    swap = Swapper()
    dog = Watchdog(ConfigView.of(config()), swap, prober(health))
    dog.start({"git": None})  # a watchdog restarted mid-outage had git on fallback
    assert swap.calls == [({"web": None, "git": "home"}, frozenset({"web", "git"}))]
    assert dog.fallback() == {"web"}


def test_restart_while_all_is_well_cuts_no_connection() -> None:
    swap = Swapper()
    Watchdog(ConfigView.of(config()), swap, prober({})).start({})
    assert swap.calls == [({"web": "home", "git": "home"}, frozenset())]


def test_fall_and_rise_count_in_a_row() -> None:
    health = {"web": "up", "git": "up"}
    swap = Swapper()
    dog = Watchdog(ConfigView.of(config(fall=2, rise=3)), swap, prober(health))
    dog.start()
    swap.calls.clear()
    health["web"] = "down"
    assert dog.tick() == frozenset() and swap.prepared == 1  # first failure: warm the swapper up
    health["web"] = "up"
    assert dog.tick() == frozenset() and swap.cancelled == 1  # a blip: counters reset
    health["web"] = "down"
    dog.tick()
    assert dog.tick() == {"web"}
    assert swap.calls == [({"web": None, "git": "home"}, frozenset({"web"}))]
    health["web"] = "up"
    assert dog.tick() == frozenset() and dog.tick() == frozenset()
    assert dog.tick() == {"web"}
    assert swap.calls[-1] == ({"web": "home", "git": "home"}, frozenset({"web"}))
    assert dog.status["web"].swaps == 2 and dog.status["web"].state == "forwarding"


def test_slow_counts_as_alive() -> None:
    health = {"web": "up", "git": "up"}
    dog = Watchdog(ConfigView.of(config(fall=1)), Swapper(), prober(health))
    dog.start()
    health["web"] = "slow"
    assert dog.tick() == frozenset() and dog.fallback() == frozenset()


def test_failed_swap_keeps_state_and_retries() -> None:
    health = {"web": "up", "git": "up"}
    swap = Swapper()
    dog = Watchdog(ConfigView.of(config(fall=1)), swap, prober(health))
    dog.start()
    health["git"] = "down"
    swap.fail = True
    with pytest.raises(BackendError, match="iptables: locked"):
        dog.tick()
    assert dog.status["git"].state == "forwarding"
    swap.fail = False
    assert dog.tick() == {"git"} and dog.fallback() == {"git"}


def test_backup_home_takes_over_then_hands_back_without_cutting_it() -> None:
    health = {"web@home": "up", "web@attic": "up"}
    swap = Swapper()
    dog = Watchdog(ConfigView.of(config(fall=1, rise=1, backups=("attic",))), swap, prober(health))
    dog.start()
    health["web@home"] = "down"
    assert dog.tick() == {"web"}
    assert swap.calls[-1] == ({"web": "attic", "git": "home"}, frozenset({"web"}))  # home is dead: forget its flows
    assert dog.status["web"].state == "forwarding" and dog.status["web"].active == "attic"
    health["web@attic"] = "down"
    dog.tick()
    assert dog.status["web"].active is None and dog.status["web"].state == "fallback"
    health["web@home"] = "up"
    health["web@attic"] = "up"
    dog.tick()
    assert dog.status["web"].active == "home"
    # Back from the page: flows flushed (nobody keeps the page).
    assert swap.calls[-1][1] == frozenset({"web"})
    health["web@home"] = "down"
    dog.tick()
    health["web@home"] = "up"
    dog.tick()
    # From a healthy backup back to home: the backup's connections may finish.
    assert swap.calls[-1] == ({"web": "home", "git": "home"}, frozenset())


def test_snapshot_is_json_ready_and_restarts_read_it() -> None:
    import json

    dog = Watchdog(ConfigView.of(config()), Swapper(), prober({"web": "up", "git": "down"}), clock=lambda: 1000.0)
    dog.start()
    data = json.loads(json.dumps(dog.snapshot()))
    states = {s["name"]: (s["state"], s["healthy"], s["active"]) for s in data["services"]}
    assert states == {"web": ("forwarding", True, "home"), "git": ("fallback", False, None)}
    assert believed_targets(data) == {"web": "home", "git": None}


def test_reconfigure_keeps_known_states_and_adds_new_services() -> None:
    health = {"web": "down", "git": "up", "mail": "up"}
    dog = Watchdog(ConfigView.of(config()), Swapper(), prober(health))
    dog.start()
    assert dog.fallback() == {"web"}
    new = config()
    services = dict(new.services)
    del services["git"]
    services["mail"] = Service("mail", IPv4Address("203.0.113.10"), 25, "home", 2525)
    dog.reconfigure(Config(vps=new.vps, tunnel=new.tunnel, homes=new.homes, services=services, watch=new.watch))
    assert set(dog.status) == {"web", "mail"} and dog.fallback() == {"web"}
    assert dog.status["mail"].state == "forwarding"


def test_lost_checks_while_home_keeps_sending_are_not_an_outage() -> None:
    counter = {"rx": 100}

    def probe(svc: Service, home: str, cfg: Config) -> Result:
        counter["rx"] += 50  # meanwhile, home's replies to visitors keep arriving
        return Result("down", 0.6, "connect: timed out", timed_out=True)

    one_home = config(fall=1)
    one_home = Config(vps=one_home.vps, tunnel=one_home.tunnel, homes={"home": one_home.homes["home"]},
                      services=one_home.services, watch=one_home.watch)
    dog = Watchdog(ConfigView.of(one_home), Swapper(), probe, activity=lambda: counter["rx"])
    dog.start()
    assert dog.tick() == frozenset() and dog.fallback() == frozenset()
    assert "home still sending" in dog.status["web"].detail
    # A refusal is an answer: the service is down even while traffic flows.
    dog.prober = lambda s, h, c: (counter.__setitem__("rx", counter["rx"] + 1), Result("down", 0.01, "refused"))[1]
    assert dog.tick() == {"web", "git"}


def test_no_traffic_and_no_answer_is_an_outage() -> None:
    one_home = config(fall=1)
    one_home = Config(vps=one_home.vps, tunnel=one_home.tunnel, homes={"home": one_home.homes["home"]},
                      services=one_home.services, watch=one_home.watch)
    dog = Watchdog(ConfigView.of(one_home), Swapper(), prober({}), activity=lambda: 100)
    dog.start()
    dog.prober = lambda s, h, c: Result("down", 0.6, "connect: timed out", timed_out=True)
    assert dog.tick() == {"web", "git"}
