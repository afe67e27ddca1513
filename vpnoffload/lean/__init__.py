"""The kit of the long-running, low-memory VPS processes: spawning children, log lines, systemd notify, the config snapshot."""
