"""``seltune cluster up|down|status|env`` and ``seltune submit``.

``cluster`` drives the local multi-node launcher (``cluster/local.py``: one
``ray start --block`` per node, stopped by pid, never ``ray stop``); ``submit`` sends a
``seltune`` command to a running cluster as a Ray job (``tuning/submit.py``).
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    cluster = sub.add_parser(
        "cluster", help="start/stop a local multi-node Ray cluster (for tests and laptops)",
        description="A local multi-node Ray cluster: one `ray start --block` per node, each "
        "in its own session, stopped by pid (never `ray stop`). State, token and node logs "
        "live in --dir (default $SELTUNE_CLUSTER_DIR or ~/.seltune/local-cluster).",
    )
    csub = cluster.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)

    up = csub.add_parser("up", help="start a head and N-1 worker nodes")
    up.add_argument("--nodes", type=int, default=3, help="nodes including the head (default 3)")
    up.add_argument("--cpus-per-node", type=int, default=1, help="logical CPUs per node")
    up.add_argument("--gpus-per-node", type=int, default=0,
                    help="logical GPUs per node (Ray does not check that they exist)")
    up.add_argument("--dir", help="state/log directory")
    up.add_argument("--port", type=int, help="head GCS port (default: a free one)")
    up.add_argument("--dashboard", action="store_true",
                    help="also start the dashboard and job server (needs ray[default])")
    up.add_argument("--auth-mode", choices=("token", "disabled"), default="token",
                    help="Ray token authentication (default token, as Ray >= 2.60)")
    up.add_argument("--object-store-mb", type=int, default=200,
                    help="object store per node, MiB (default 200)")
    up.add_argument("--timeout", type=float, default=180.0,
                    help="seconds to wait for the nodes to start")
    up.add_argument("--json", action="store_true", help="print the state as JSON")
    up.set_defaults(func=_up)

    down = csub.add_parser("down", help="stop every node by pid (SIGTERM, then SIGKILL)")
    down.add_argument("--dir", help="state/log directory")
    down.add_argument("--grace", type=float, default=10.0,
                      help="seconds between SIGTERM and SIGKILL (default 10)")
    down.add_argument("--keep-temp", action="store_true",
                      help="keep Ray's temp dir (session logs) instead of deleting it")
    down.set_defaults(func=_down)

    st = csub.add_parser("status", help="show the nodes and whether each is alive")
    st.add_argument("--dir", help="state/log directory")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_status)

    env = csub.add_parser("env", help="print shell lines to point drivers at the cluster: "
                          "eval \"$(seltune cluster env)\"")
    env.add_argument("--dir", help="state/log directory")
    env.set_defaults(func=_env)

    submit = sub.add_parser(
        "submit", help="submit a seltune command (e.g. a sweep) to a Ray cluster as a job",
        description="Submit `seltune ARGS...` as a Ray job through Ray's job submission API. "
        "Example: seltune submit --address http://HEAD:8265 -- sweep --num-samples 64 "
        "--address auto --storage /mnt/shared/seltune (a directory every node mounts)",
    )
    submit.add_argument("--address", help="job server URL, e.g. http://HEAD:8265 "
                        "(default: $RAY_API_SERVER_ADDRESS, else the local cluster's)")
    submit.add_argument("--runtime-env", help="runtime env YAML/JSON "
                        "(default: cluster/runtime_env.yaml)")
    submit.add_argument("--no-runtime-env", action="store_true",
                        help="submit without any runtime env")
    submit.add_argument("--submission-id", help="job id to use (default: Ray picks one)")
    submit.add_argument("--entrypoint-num-cpus", type=float, default=None,
                        help="CPUs reserved for the driver (default: none)")
    submit.add_argument("--dir", help="local cluster state dir, used when --address is absent")
    submit.add_argument("--json", action="store_true")
    submit.add_argument("seltune_args", nargs=argparse.REMAINDER, metavar="-- COMMAND ...",
                        help="the seltune command to run on the cluster, after --")
    submit.set_defaults(func=_submit)


def _load(args: argparse.Namespace):
    from cluster import local

    return local.load_state(args.dir)


def _up(args: argparse.Namespace) -> int:
    from cluster import local
    from tuning.terminal import console, print_json

    state = local.up(args.nodes, args.cpus_per_node, gpus_per_node=args.gpus_per_node,
                     directory=args.dir, port=args.port, dashboard=args.dashboard,
                     auth_mode=args.auth_mode, object_store_mb=args.object_store_mb,
                     timeout_s=args.timeout)
    if args.json:
        print_json(local.status(state))
        return 0
    out = console(stderr=True)
    out.print(f"local Ray cluster up: {len(state.nodes)} node(s), GCS {state.address}, "
              f"auth {state.auth_mode}, state {local.state_path(state.dir)}")
    if state.dashboard_url:
        out.print(f"dashboard / job server: {state.dashboard_url}")
    out.print("point drivers at it (token auth must match in every process):")
    for line in local.export_lines(state):
        print(line)
    dir_flag = f" --dir {state.dir}" if args.dir else ""
    out.print(f"then: seltune sweep --address {state.address} ...   |   "
              f"stop: seltune cluster down{dir_flag}")
    return 0


def _down(args: argparse.Namespace) -> int:
    from cluster import local
    from tuning.terminal import console

    state = local.down(_load(args), grace_s=args.grace, remove_temp=not args.keep_temp)
    console(stderr=True).print(f"local Ray cluster in {state.dir} stopped "
                               f"({len(state.nodes)} node(s), by pid)")
    return 0


def _status(args: argparse.Namespace) -> int:
    from cluster import local
    from tuning.terminal import console, print_json, print_table

    info = local.status(_load(args))
    # Exit 1 when some node of a cluster that should run is dead (degraded / dead).
    code = 0 if info["state"] in ("running", "stopped") else 1
    if args.json:
        print_json(info)
        return code
    console().print(f"{info['state']}: {info['alive_nodes']}/{len(info['nodes'])} node(s) "
                    f"alive, GCS {info['address']}, auth {info['auth_mode']}"
                    + (f", dashboard {info['dashboard_url']}" if info["dashboard_url"] else ""))
    print_table("nodes", ["node", "role", "pid", "alive", "processes", "log"],
                [[n["index"], n["role"], n["pid"], "yes" if n["alive"] else "no",
                  n["processes"], n["log"]] for n in info["nodes"]])
    return code


def _env(args: argparse.Namespace) -> int:
    from cluster import local

    for line in local.export_lines(_load(args)):
        print(line)
    return 0


def _submit(args: argparse.Namespace) -> int:
    from tuning import submit as submit_mod
    from tuning.terminal import console, print_json

    seltune_args = list(args.seltune_args)
    if seltune_args and seltune_args[0] == "--":
        seltune_args = seltune_args[1:]
    result = submit_mod.submit(
        seltune_args, address=args.address, runtime_env_path=args.runtime_env,
        use_runtime_env=not args.no_runtime_env, submission_id=args.submission_id,
        entrypoint_num_cpus=args.entrypoint_num_cpus, cluster_dir=args.dir,
    )
    if args.json:
        print_json(result)
        return 0
    print(result["job_id"])
    out = console(stderr=True)
    out.print(f"submitted to {result['address']}: {result['entrypoint']}")
    out.print("follow it with:")
    for line in result["follow"]:
        out.print(f"  {line}")
    sys.stdout.flush()
    return 0
