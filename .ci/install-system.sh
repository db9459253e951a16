#!/bin/sh
# System packages the test suite needs (Debian/Ubuntu): SLURM (slurmctld, slurmd,
# sbatch, ...) and munge, for the single-node cluster of tests/test_slurm.py.
# Idempotent: installs only what is missing; the daemons are not started here
# (the tests start their own, under a temporary directory).
set -eu

packages="slurm-wlm munge"
missing=""
for package in $packages; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $package"
    fi
done

if [ -z "$missing" ]; then
    echo "install-system: already installed:$(printf ' %s' $packages)"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
echo "install-system: installing$missing"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing
