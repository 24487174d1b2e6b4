#!/usr/bin/env bash
# Test set-up for the SLURM tests: install Debian's slurm-wlm and munge when they are missing (as root; CI runs as
# root). The tests then run their own munged, slurmctld and slurmd from a temporary directory (tests/core/slurm.py).
# Where SLURM or munge is already configured on this machine (/etc/slurm/slurm.conf, /etc/munge/munge.key, a running
# munged or slurmctld), nothing is installed: the tests still run against their own daemons if the binaries exist.
# Without root and without the binaries the SLURM tests skip loudly; in CI (CI=true) they fail instead.
set -euo pipefail
have_all() {
    for cmd in munged slurmctld slurmd sbatch squeue scancel; do
        command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || return 1
    done
}
if have_all; then
    exit 0
fi
configured=""
for f in /etc/slurm/slurm.conf /etc/slurm-llnl/slurm.conf /etc/munge/munge.key; do
    [ -e "$f" ] && configured="$configured $f"
done
for daemon in munged slurmctld slurmd; do
    pgrep -x "$daemon" >/dev/null 2>&1 && configured="$configured (a running $daemon)"
done
if [ -n "$configured" ]; then
    echo "WARNING: SLURM or munge is already configured here ($configured ) but its commands are incomplete;" \
         "not installing over it: the SLURM tests will be skipped" >&2
elif [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "installing Debian's slurm-wlm and munge for the SLURM tests (apt-get)" >&2
    apt-get update -qq
    # policy-rc.d: the packages' own services are not started; the tests run their own daemons
    policy=/usr/sbin/policy-rc.d
    own_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && own_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null || {
        [ -n "$own_policy" ] && rm -f "$policy"; exit 1; }
    [ -n "$own_policy" ] && rm -f "$policy"
    exit 0
else
    echo "WARNING: slurm-wlm and munge are missing and this is not root: the SLURM tests will be skipped" >&2
fi
if [ "${CI:-}" = "true" ]; then
    echo "CI=true: the SLURM tests must run; install them (apt-get install slurm-wlm munge)" >&2
    exit 1
fi
