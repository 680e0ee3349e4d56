#!/bin/sh
# A calltone node in deploy/compose.yaml: join the Ray cluster as a node with no CPUs (scoring actors then run on
# the Ray workers, never beside live calls; the node's jobs reach the cluster through its local raylet), then
# become `calltone serve` (exec, so that the SIGTERM of `docker stop` reaches it and it drains: docs/deploy.md).
# Live calls never depend on Ray: if the cluster cannot be joined the node serves anyway (Ray jobs then fail).
set -eu
if [ "${CALLTONE_BATCH__ENGINE:-local}" = ray ] && [ -n "${CALLTONE_BATCH__RAY_ADDRESS:-}" ]; then
    tries=0
    until ray start --address="$CALLTONE_BATCH__RAY_ADDRESS" --num-cpus=0 --disable-usage-stats >/tmp/ray-start.log 2>&1; do
        tries=$((tries + 1))
        if [ "$tries" -ge 15 ]; then
            echo "calltone node: could not join the Ray cluster at $CALLTONE_BATCH__RAY_ADDRESS; serving without it" >&2
            tail -n 20 /tmp/ray-start.log >&2
            break
        fi
        sleep 2
    done
fi
exec calltone serve --host 0.0.0.0 --port "${CALLTONE_SERVER__PORT:-8000}"
