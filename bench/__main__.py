"""`uv run python -m bench WORKLOAD [options]`: run a benchmark, print its table, write its JSON
result under bench/results/."""

from __future__ import annotations

import argparse
import asyncio


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    commands = parser.add_subparsers(dest="workload", required=True)

    for name, help_text in (
        ("throughput", "no-op runs through 1 and 2 worker processes"),
        ("pgcost", "Postgres transactions and WAL bytes per run"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--tasks", type=int, default=50_000)
        command.add_argument(
            "--workers",
            default="1,2" if name == "throughput" else "2",
            help="comma-separated worker process counts",
        )
        command.add_argument("--runs", type=int, default=3)
        command.add_argument("--slots", type=int, default=200)
        command.add_argument("--warmup", type=int, default=5_000)

    latency = commands.add_parser("latency", help="steady rate on an idle engine")
    latency.add_argument("--rate", type=float, default=100.0, help="runs per second")
    latency.add_argument("--seconds", type=float, default=30.0)
    latency.add_argument("--runs", type=int, default=3)

    dag = commands.add_parser("dag", help="a 20-step chain and a 1,000-wide fan-out/fan-in")
    dag.add_argument("--runs", type=int, default=3)
    dag.add_argument("--repeats", type=int, default=5, help="chains timed per run (median)")

    scale = commands.add_parser("scale", help="a million queued runs: memory, restart, drain")
    scale.add_argument("--tasks", type=int, default=1_000_000)
    scale.add_argument("--workers", type=int, default=2)
    scale.add_argument("--runs", type=int, default=1)

    dashboard = commands.add_parser("dashboard", help="the dashboard's pages over 1,000,000 runs")
    dashboard.add_argument("--runs", type=int, default=1_000_000, help="finished runs stored")
    dashboard.add_argument("--repeats", type=int, default=20, help="fetches of each page")

    keep = commands.add_parser(
        "retention", help="dropping a day of 10,000,000 runs, against deleting by batches"
    )
    keep.add_argument("--runs", type=int, default=10_000_000, help="finished runs of the day")
    keep.add_argument("--events", type=int, default=2, help="state changes per run")
    keep.add_argument(
        "--short-lived", type=int, default=200_000, help="runs deleted by batches instead"
    )

    assign = commands.add_parser("assign", help="one assignment decision with 10,000 keys")
    assign.add_argument("--keys", type=int, default=10_000)
    assign.add_argument("--workers", type=int, default=100)
    assign.add_argument("--runs", type=int, default=5)

    edge = commands.add_parser("edge", help="engine CPU and wall time of one request")
    edge.add_argument("--runs", type=int, default=3)
    edge.add_argument(
        "--single", type=int, default=1000, help="requests per single-request measure"
    )

    outbox = commands.add_parser(
        "outbox", help="runs enqueued in the application's transaction, drained by the engine"
    )
    outbox.add_argument(
        "--modes",
        default="app,own",
        help="comma-separated: app (an application database of its own), own (the engine's)",
    )
    outbox.add_argument("--rate", type=float, default=50.0, help="transactions per second")
    outbox.add_argument("--seconds", type=float, default=10.0, help="of one-row transactions")
    outbox.add_argument(
        "--tasks", type=int, default=50_000, help="rows filled in before the engine drains them"
    )
    outbox.add_argument("--runs", type=int, default=3)

    peers = commands.add_parser("peers", help="Taskyard beside PgQueuer, Procrastinate, Celery")
    peers.add_argument("--peers", default="pgqueuer,procrastinate,celery")
    peers.add_argument("--tasks", type=int, default=20_000)
    peers.add_argument("--workers", type=int, default=2)
    peers.add_argument("--runs", type=int, default=3)
    peers.add_argument("--rate", type=float, default=100.0)
    peers.add_argument("--seconds", type=float, default=30.0)
    peers.add_argument(
        "--single", type=int, default=2_000, help="jobs enqueued one by one, per run"
    )
    peers.add_argument(
        "--batched", type=int, default=20_000, help="jobs enqueued in batches of 1,000, per run"
    )
    peers.add_argument(
        "--drain",
        type=int,
        default=20_000,
        help="jobs queued before one worker process drains them",
    )

    chaos = commands.add_parser(
        "chaos",
        help="a mixed workload while Postgres restarts and the engine and workers are killed",
    )
    chaos.add_argument("--minutes", type=float, default=3.0, help="of workload under faults")
    chaos.add_argument("--seed", type=int, default=1, help="the fault plan and the workload")
    chaos.add_argument("--workers", type=int, default=3, help="worker processes")
    chaos.add_argument(
        "--judge",
        metavar="DIR",
        default=None,
        help="judge a finished run's ledgers and evidence again (no run)",
    )

    nodes = commands.add_parser(
        "cluster", help="several engine nodes: failover after kill -9, throughput with 1-3 nodes"
    )
    nodes.add_argument("--kills", type=int, default=5, help="nodes killed, one after another")
    nodes.add_argument("--tenants", type=int, default=6)
    nodes.add_argument("--lease-seconds", type=float, default=5.0)
    nodes.add_argument("--tasks", type=int, default=30_000, help="runs per throughput run")
    nodes.add_argument("--runs", type=int, default=3, help="throughput runs per node count")

    storm = commands.add_parser(
        "cluster-chaos",
        help="three nodes, 20 tenants' mixed workload, two nodes killed with kill -9 and back",
    )
    storm.add_argument("--runs", type=int, default=10_000, help="runs triggered in all")
    storm.add_argument("--tenants", type=int, default=20)
    storm.add_argument("--seconds", type=float, default=60.0, help="over which they are triggered")
    storm.add_argument("--seed", type=int, default=1, help="the workload's mix")

    args = parser.parse_args()
    if args.workload in ("throughput", "pgcost"):
        from bench import throughput

        asyncio.run(
            throughput.main(
                args.tasks,
                [int(w) for w in args.workers.split(",")],
                args.runs,
                args.slots,
                args.warmup,
                args.workload,
            )
        )
    elif args.workload == "latency":
        from bench import latency as latency_workload

        asyncio.run(latency_workload.main(args.rate, args.seconds, args.runs))
    elif args.workload == "dag":
        from bench import dag as dag_workload

        asyncio.run(dag_workload.main(args.runs, args.repeats))
    elif args.workload == "scale":
        from bench import scale as scale_workload

        asyncio.run(scale_workload.main(args.tasks, args.workers, args.runs))
    elif args.workload == "dashboard":
        from bench import dashboard as dashboard_workload

        asyncio.run(dashboard_workload.main(args.runs, args.repeats))
    elif args.workload == "retention":
        from bench import retention as retention_workload

        asyncio.run(retention_workload.main(args.runs, args.events, args.short_lived))
    elif args.workload == "assign":
        from bench import assign as assign_workload

        asyncio.run(assign_workload.main(args.keys, args.workers, args.runs))
    elif args.workload == "edge":
        from bench import edge as edge_workload

        asyncio.run(edge_workload.main(args.runs, args.single))
    elif args.workload == "outbox":
        from bench import outbox as outbox_workload

        asyncio.run(
            outbox_workload.main(
                args.modes.split(","), args.rate, args.seconds, args.tasks, args.runs
            )
        )
    elif args.workload == "chaos":
        from bench import chaos as chaos_workload

        asyncio.run(chaos_workload.main(args.minutes, args.seed, args.workers, args.judge))
    elif args.workload == "cluster":
        from bench import cluster as cluster_workload

        asyncio.run(
            cluster_workload.main(
                args.kills, args.tenants, args.lease_seconds, args.tasks, args.runs
            )
        )
    elif args.workload == "cluster-chaos":
        from bench import cluster_chaos

        settings = cluster_chaos.ClusterChaosSettings(
            runs=args.runs, tenants=args.tenants, seconds=args.seconds, seed=args.seed
        )
        asyncio.run(cluster_chaos.main(settings))
    elif args.workload == "peers":
        from bench import peers_workload

        asyncio.run(
            peers_workload.main(
                args.peers.split(","),
                args.tasks,
                args.workers,
                args.runs,
                args.rate,
                args.seconds,
                args.single,
                args.batched,
                args.drain,
            )
        )


if __name__ == "__main__":
    main()
