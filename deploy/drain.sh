#!/usr/bin/env bash
# Take one calltone node out of deploy/compose.yaml without losing a call (docs/deploy.md, "Draining a node").
#
#   deploy/drain.sh CONTAINER [--wait SECONDS]   drain, wait for its live calls to end, stop it
#   deploy/drain.sh CONTAINER --ready            put it back in HAProxy (after `docker start CONTAINER`)
#
# 1. SIGUSR1 to the node (PID 1 of its container is `calltone serve`): it drains, /readyz answers 503 and a new call
#    is refused with 1012; HAProxy's slot also goes to state DRAIN (runtime API), so no new connection is sent to it
#    even before its health check sees the 503. Its open websockets (live calls, feeds) carry on.
# 2. Wait, up to --wait seconds (default 300), until the node's GET /readyz says active_calls = 0: calls end by
#    themselves.
# 3. docker stop (SIGTERM, 60 s grace): calltone closes its listener and every websocket still open with 1012
#    (shutting_down); those calls are left interrupted, their producers reconnect with the same call id, HAProxy
#    sends them to another node, which resumes them (started.resumed = true, seq and call time continue).
#    The process exits once every call is finalised and stored.
# Needs: docker, run from anywhere; the HAProxy container of the same compose project (name: calltone).
set -euo pipefail

usage() { sed -n '2,6p' "$0" >&2; exit 2; }
[ $# -ge 1 ] || usage
container=$1; shift
wait_s=300
mode=drain
while [ $# -gt 0 ]; do
    case $1 in
        --wait) wait_s=${2:?}; shift 2 ;;
        --ready) mode=ready; shift ;;
        *) usage ;;
    esac
done
project=${COMPOSE_PROJECT_NAME:-calltone}
haproxy=$(docker ps -q --filter "label=com.docker.compose.project=$project" --filter "label=com.docker.compose.service=haproxy" | head -n1)
[ -n "$haproxy" ] || { echo "drain: no running haproxy container in compose project $project" >&2; exit 1; }

# one runtime API command (HAProxy listens on 127.0.0.1:9999 inside its container; bash's /dev/tcp, no socat needed)
hap() {
    docker exec -i "$haproxy" bash -c 'exec 3<>/dev/tcp/127.0.0.1/9999; printf "%s\n" "$1" >&3; cat <&3' _ "$1"
}

addr=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$container" | awk '{print $1}')
[ -n "$addr" ] || { echo "drain: $container has no address (not running?)" >&2; exit 1; }

# "show servers state <backend>": be_id be_name srv_id srv_name srv_addr ...
slots() { hap "show servers state $1" | awk -v a="$addr" '$5 == a {print $4}'; }
set_state() {
    local state=$1 found=0
    for backend in ingest api; do
        for srv in $(slots "$backend"); do
            hap "set server $backend/$srv state $state" >/dev/null
            echo "haproxy: $backend/$srv ($addr) -> $state"
            found=1
        done
    done
    [ "$found" = 1 ] || { echo "drain: HAProxy has no server at $addr" >&2; exit 1; }
}

readyz() {  # the node's own /readyz body (200 or 503), from inside its container
    docker exec "$container" python -c "
import json, urllib.request, urllib.error
try:
    body = urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=3).read()
except urllib.error.HTTPError as e:
    body = e.read()
print(json.loads(body).get('active_calls', 0))"
}

if [ "$mode" = ready ]; then
    set_state ready
    exit 0
fi

docker kill --signal USR1 "$container" >/dev/null  # calltone drains: /readyz 503, new calls refused (1012), live ones go on
echo "drain: $container draining (SIGUSR1)"
set_state drain
deadline=$((SECONDS + wait_s))
while :; do
    calls=$(readyz 2>/dev/null || echo "?")
    echo "drain: $container has $calls live call(s)"
    [ "$calls" = 0 ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "drain: waited ${wait_s} s; stopping anyway: its producers get 1012 and resume on another node"
        break
    fi
    sleep 5
done
docker stop -t 60 "$container" >/dev/null
echo "drain: $container stopped. Its HAProxy slot stays in DRAIN: after 'docker start $container' (and /readyz 200) run"
echo "       $0 $container --ready"
