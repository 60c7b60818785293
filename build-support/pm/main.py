"""`./pm`: Production Master's local commands (dev stack, test suite, lint).

Run through the ./pm shim, which provides .stack/venv with the pinned local-stack tools.
"""

# ruff: noqa: T201 -- a command-line front end: printing is its output.

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from types import FrameType

import bench
import benchembed
import benchengine
import demo
import edge
import evaluate
import stack
from profiles import REPO_ROOT, StackError, load_profile

USAGE = """\
usage: ./pm <command>

  up [--infra-only]     start the dev stack on 127.0.0.1, data in .stack/dev/: PostgreSQL, Redis,
                        OpenBao, moto (S3), the four services (packaged and migrated first) and
                        Envoy; --infra-only leaves out the services, packaging and migrations
  status                health of each dev component (exit 0 healthy, 1 unhealthy, 3 not running)
  down                  stop exactly the processes ./pm up recorded
  infra up|down|env --profile test
                        the infrastructure alone for the test suite, fresh in .stack/test/;
                        `env` prints the PM_TEST_* exports that point tests at it
  test [pants args]     test infrastructure up, `./pants --no-pantsd lint check test ::` (or
                        `./pants test <args>`), infrastructure down; exits with the suite's status
  check-edge            build the descriptor set, render the Envoy config, envoy --mode validate
  lint                  ./pants lint ::
  demo                  one real investigation of the demo incident through the REST API (starts
                        the dev stack when needed); prints verdict, culprit, confidence, report
  bench intake [--seconds N] [--concurrency 1,8,32] [--ingest-replicas N] [--keep]
               [--paths pagerduty,jira,api,reads]
                        intake and read throughput and latency through Envoy (wrk) on a fresh
                        stack of its own in .stack/bench/; checks that every write 2xx became one
                        row and one entry and that every read was answered 2xx
  bench engine [--investigations N] [--concurrency 1,8,32] [--keep]
                        whole investigations (rule reasoner, demo incident) through Envoy on a fresh
                        stack of its own; investigations per minute, submit-to-verdict p50/p99, PSS
  bench embed [--texts N] [--rounds R]
                        the local embedding model (similar incidents) in the orchestrator's pex:
                        load time, texts and tokens per second, one short text's latency
  eval <folder> [--json FILE] [--keep]
                        the rule reasoner on every case of a RootCauseBench-layout folder, through
                        the registry and the sandbox on a stack of its own (.stack/eval/); prints
                        accuracy (overall, on "none" cases), secondary scores and time per case
  help                  this text

Ports (defaults): PORT 3000 (Envoy), PM_ENVOY_ADMIN_PORT 9901, PM_PG_PORT 15432,
PM_REDIS_PORT 16379, PM_OPENBAO_PORT 18200, PM_MOTO_PORT 19000, PM_<SERVICE>_PORT and
PM_<SERVICE>_METRICS_PORT for INGEST 50051/9101, ORCHESTRATOR 50052/9102, WORKER 50053/9103,
REGISTRY 50054/9104; test profile: PM_TEST_PG_PORT 25432, PM_TEST_REDIS_PORT 26379,
PM_TEST_OPENBAO_PORT 28200, PM_TEST_MOTO_PORT 29000; bench profile: PM_BENCH_PORT 3300 and
PM_BENCH_* like the dev ones (+100 on the service ports, PG 35432, Redis 36379); eval profile:
PM_EVAL_PORT 3400 and PM_EVAL_* (+200 on the service ports, PG 45432, Redis 46379).
PM_INGEST_REPLICAS=N runs N ingest processes (ports +1000 each) behind Envoy.
"""

PANTS_CANCEL_TIMEOUT_SECONDS = 30.0
SHORT_USAGE = "./pm <command> [options]   (./pm help lists the commands)"


def main(argv: Sequence[str]) -> int:
    """Parse the command line and run the command; the exit status is returned."""
    # SIGTERM unwinds the stack like Ctrl-C does, so a half-started stack or the test
    # infrastructure is still stopped.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # Progress lines and errors (stderr) must interleave in order when piped.
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    args = _parser().parse_args(argv)
    environ = dict(os.environ)
    try:
        return int(args.run(args, environ))
    except StackError as error:
        print(f"pm: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="./pm", usage=SHORT_USAGE, add_help=False)
    parser.set_defaults(run=_help)
    commands = parser.add_subparsers(prog="./pm")

    up = commands.add_parser("up", add_help=False)
    up.add_argument("--infra-only", action="store_true")
    up.set_defaults(run=lambda args, environ: stack.up_dev(environ, infra_only=args.infra_only))

    commands.add_parser("status", add_help=False).set_defaults(run=lambda args, environ: stack.status("dev", environ))
    commands.add_parser("down", add_help=False).set_defaults(run=lambda args, environ: stack.down("dev", environ))

    infra = commands.add_parser("infra", add_help=False)
    infra.add_argument("action", choices=("up", "down", "env"))
    infra.add_argument("--profile", choices=("test",), default="test")
    infra.set_defaults(run=_infra)

    test = commands.add_parser("test", add_help=False)
    test.add_argument("pants_args", nargs=argparse.REMAINDER)
    test.set_defaults(run=lambda args, environ: _test(args.pants_args, environ))

    commands.add_parser("check-edge", add_help=False).set_defaults(run=_check_edge)
    commands.add_parser("lint", add_help=False).set_defaults(run=lambda args, environ: _pants(["lint", "::"], environ))
    commands.add_parser("demo", add_help=False).set_defaults(run=_demo)

    bench = commands.add_parser("bench", add_help=False)
    bench.add_argument("suite", choices=("intake", "engine", "embed"))
    bench.add_argument("--texts", type=int, default=256)
    bench.add_argument("--rounds", type=int, default=3)
    bench.add_argument("--investigations", type=int, default=20)
    bench.add_argument("--seconds", type=float, default=10.0)
    bench.add_argument("--concurrency", default="1,8,32")
    bench.add_argument("--keep", action="store_true")
    bench.add_argument("--ingest-replicas", type=int, default=1)
    bench.add_argument("--paths", default="")
    bench.set_defaults(run=_bench)
    evaluation = commands.add_parser("eval", add_help=False)
    evaluation.add_argument("folder")
    evaluation.add_argument("--json")
    evaluation.add_argument("--keep", action="store_true")
    evaluation.set_defaults(
        run=lambda args, environ: evaluate.evaluate(args.folder, environ, output=args.json, keep=args.keep)
    )
    commands.add_parser("help", add_help=False).set_defaults(run=_help)
    return parser


def _infra(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    if args.action == "up":
        return stack.up_test_infra(environ)
    if args.action == "down":
        return stack.down(args.profile, environ)
    for name, value in stack.test_environ(environ).items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


def _test(pants_args: list[str], environ: Mapping[str, str]) -> int:
    """Run the suite against fresh test infrastructure, which is always stopped afterwards."""
    goals = ["test", *pants_args] if pants_args else ["--no-pantsd", "lint", "check", "test", "::"]
    try:
        stack.up_test_infra(environ)
        return _pants(goals, {**environ, **stack.test_environ(environ)})
    finally:
        stack.down("test", environ)


def _pants(goals: list[str], environ: Mapping[str, str]) -> int:
    """Run ./pants with `goals`; when interrupted, let Pants cancel its own work first."""
    print(f"pm: ./pants {' '.join(goals)}")
    process = subprocess.Popen([str(REPO_ROOT / "pants"), *goals], cwd=REPO_ROOT, env=dict(environ))
    try:
        return process.wait()
    except BaseException:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=PANTS_CANCEL_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        raise


def _check_edge(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """Build the descriptor set, render the Envoy config and run `envoy --mode validate` on it."""
    profile = load_profile("dev", environ)
    profile.dir.mkdir(parents=True, exist_ok=True)
    config = edge.prepare_config(profile)
    print(f"pm: {config} is valid for Envoy")
    return 0


def _demo(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    return demo.run_demo(environ)


def _bench(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    if args.suite == "embed":
        if not 1 <= args.texts <= 100_000 or not 1 <= args.rounds <= 100:
            raise StackError("--texts must be between 1 and 100000, --rounds between 1 and 100")
        return benchembed.bench_embed(environ, texts=args.texts, rounds=args.rounds)
    if not 1 <= args.seconds <= 120:
        raise StackError("--seconds must be between 1 and 120")
    levels = bench.parse_concurrencies(args.concurrency)
    if args.suite == "engine":
        if not 1 <= args.investigations <= 1000:
            raise StackError("--investigations must be between 1 and 1000")
        return benchengine.bench_engine(
            environ, investigations=args.investigations, concurrencies=levels, keep=args.keep
        )
    return bench.bench_intake(
        environ,
        seconds=args.seconds,
        concurrencies=levels,
        keep=args.keep,
        ingest_replicas=args.ingest_replicas,
        paths=bench.parse_paths(args.paths),
    )


def _help(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    print(USAGE, end="")
    return 0


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
