#!/bin/bash
# Entrypoint of the compose lab: ROLE=vps|home|visitor, same image for all three.
#
# Each role does what a person would do on that machine (see compose/README.md):
#   vps      init + service add + render home (once), publish the home's config
#            and profile on the shared /exchange volume, `up vps`, then run the
#            failover watchdog in the foreground (or just stay up without it).
#   home     wait for the published files, copy them in, `up home`, then serve
#            the demo web site on :8080 in the foreground.
#   visitor  nothing; tests and people run curl in it.
#
# The compose file sets LAB_VPS_ADDRESS and LAB_TUNNEL_SUBNET. The file /run/lab-ready
# marks a role as ready (compose healthchecks look for it).
set -euo pipefail

CONFIG=/etc/vpnoffload/vpnoffload.toml
STATE=/etc/vpnoffload/state
EXCHANGE=/exchange
READY=/run/lab-ready
HOME_NAME=home
WAIT_FOR_PROFILE=${LAB_WAIT_FOR_PROFILE:-120}

say() { echo "lab[$ROLE]: $*"; }

publish_for_home() {
    # Only the config (no secrets) and the home's own profile leave the VPS:
    # the CA key stays in the VPS's state dir, as on real machines. The marker
    # is written last, so home never copies half-written files.
    local tmp
    tmp=$(mktemp -d "$EXCHANGE/.publish.XXXXXX")
    cp "$CONFIG" "$tmp/vpnoffload.toml"
    vpnoffload render home --home "$HOME_NAME" --out "$tmp" >/dev/null
    chmod 0755 "$tmp"
    rm -rf "$EXCHANGE/current"
    mv "$tmp" "$EXCHANGE/current"
    touch "$EXCHANGE/current/ready"
}

role_vps() {
    if [ ! -f "$CONFIG" ]; then
        say "init --vps-address $LAB_VPS_ADDRESS --tunnel-subnet $LAB_TUNNEL_SUBNET"
        vpnoffload init --vps-address "$LAB_VPS_ADDRESS" --tunnel-subnet "$LAB_TUNNEL_SUBNET"
        vpnoffload service add web --listen 80 --target 8080 --check http:/
    fi
    publish_for_home
    say "up vps"
    vpnoffload up vps
    touch "$READY"
    if vpnoffload watch --help >/dev/null 2>&1; then
        say "running the failover watchdog"
        exec vpnoffload watch
    fi
    say "this vpnoffload has no 'watch' command; forwarding without failover"
    exec sleep infinity
}

role_home() {
    say "waiting up to ${WAIT_FOR_PROFILE}s for the VPS to publish this home's profile"
    local waited=0
    until [ -f "$EXCHANGE/current/ready" ]; do
        if [ "$waited" -ge "$WAIT_FOR_PROFILE" ]; then
            say "no profile in $EXCHANGE after ${WAIT_FOR_PROFILE}s; is the vps container running?" >&2
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    install -d -m 0755 "$(dirname "$CONFIG")" "$STATE"
    install -m 0644 "$EXCHANGE/current/vpnoffload.toml" "$CONFIG"
    install -m 0600 "$EXCHANGE/current/$HOME_NAME.ovpn" "$STATE/$HOME_NAME.ovpn"
    say "up home"
    vpnoffload up home
    touch "$READY"
    say "serving the demo site on :8080"
    exec python -m vpnoffload.lab.web --port 8080 --name home
}

role_visitor() {
    touch "$READY"
    exec sleep infinity
}

case "${ROLE:-}" in
    vps) role_vps ;;
    home) role_home ;;
    visitor) role_visitor ;;
    *) echo "lab: set ROLE to vps, home or visitor (got '${ROLE:-}')" >&2; exit 2 ;;
esac
