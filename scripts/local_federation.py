#!/usr/bin/env python
"""Start a secured local Flower federation (SuperLink + N SuperNodes on 127.0.0.1) and run on it.

A thin command line over :class:`flower_qlearn.federation.LocalFederation` (TLS with a throw-away
CA, SuperNode authentication with registered keys, one SuperNode per agent)::

    python scripts/local_federation.py --nodes 3 -- strategy=importance num_rounds=3
    python scripts/local_federation.py --nodes 3 --serve   # keep it up for engine=deployment

``--simulation`` starts a simulation SuperLink instead (no SuperNodes; ``flwr run`` with
``num-supernodes``). The work directory (certificates, keys, logs) is a new temporary directory,
removed on exit unless ``--keep``; a ``--workdir`` given is left as is.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from pathlib import Path

from flower_qlearn.federation import LocalFederation


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM (e.g. from a CI runner) takes the same clean path as Ctrl-C.
    raise KeyboardInterrupt


def _progress(line: str) -> None:
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    """``python scripts/local_federation.py --nodes 3 -- strategy=importance num_rounds=3``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=3, help="SuperNodes to start (default 3)")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new temp dir")
    parser.add_argument("--keep", action="store_true", help="keep the temp workdir on exit")
    parser.add_argument("--insecure", action="store_true", help="no TLS and no node auth")
    parser.add_argument("--no-auth", action="store_true", help="TLS but no node authentication")
    parser.add_argument("--simulation", action="store_true", help="simulation SuperLink only")
    parser.add_argument("--serve", action="store_true", help="keep running until Ctrl-C")
    parser.add_argument("--output-dir", type=Path, default=None, help="run outputs (absolute)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the run (after --)")
    args = parser.parse_args(argv)

    overrides = list(args.overrides)
    if not args.simulation and not any(o.startswith("num_clients=") for o in overrides):
        overrides.append(f"num_clients={args.nodes}")
    fed = LocalFederation(
        args.workdir,
        args.nodes,
        tls=not args.insecure,
        auth=not (args.insecure or args.no_auth),
        simulation=args.simulation,
        keep_workdir=args.keep,
        progress=_progress,
    )
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        _progress(f"starting the federation in {fed.workdir}")
        fed.start()
        removed = fed.own_workdir and not fed.keep_workdir
        _progress(
            f"federation up: SuperLink {fed.address} (pid {fed.superlink.pid}), "
            f"{len(fed.supernodes)} SuperNodes; logs in {fed.workdir}/logs"
            + (" (removed on exit; --keep keeps them)" if removed else "")
        )
        if args.serve:
            ca = fed.certs.get("ca")
            tls = f" engine.root_certificates={ca}" if ca else " engine.insecure=true"
            print(
                "Serving until Ctrl-C. Submit with:\n  flower-qlearn engine=deployment "
                f"engine.address={fed.address}{tls} "
                f"output_dir=$PWD/outputs/deployment {shlex.join(overrides)}",
                flush=True,
            )
            while fed.superlink.running():
                time.sleep(1.0)
            return 1
        started = time.perf_counter()
        _progress("submitting the run (flwr run)")
        result = fed.run(overrides, args.output_dir)
        final = result.history[-1] if result.history else {}
        metrics = ("theta_error", "gain_error")
        key = next((k for k in metrics if final.get(k) is not None), "q_error")
        print(
            f"run finished in {time.perf_counter() - started:.1f} s: {len(result.history)} rounds,"
            f" final {key}={final.get(key)} -> {result.output_dir}"
        )
        return 0
    except KeyboardInterrupt:
        print("interrupted; stopping the federation", file=sys.stderr)
        return 130
    finally:
        fed.stop()


if __name__ == "__main__":
    sys.exit(main())
