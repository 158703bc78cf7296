"""Peers measured beside Taskyard: each module runs its system with that system's own defaults
and recommended worker settings, and offers the same few operations to `bench.peers_workload`."""
