"""Benchmarks of vpnoffload against what users run instead (``python -m bench.run``).

Everything runs in throw-away network namespace labs on this machine (see
``vpnoffload.lab.netns``); nothing is sent anywhere else. See bench/README.md.
"""
