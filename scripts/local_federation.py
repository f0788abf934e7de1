#!/usr/bin/env python
"""Start a secured local Flower federation (SuperLink + N SuperNodes on 127.0.0.1) and run on it.

Why: the in-process and Ray engines never open a socket; this launcher runs the same ServerApp
and ClientApp on Flower's real infrastructure, with the security a real deployment needs:

- TLS: a throw-away CA and a server certificate for 127.0.0.1/localhost are generated for the
  federation (``cryptography``); the SuperLink serves with them, the SuperNodes and the ``flwr``
  CLI verify against the CA. Nothing runs with ``--insecure`` unless asked to.
- SuperNode authentication: the SuperLink runs with ``--enable-supernode-auth``; each SuperNode
  gets its own EC key pair (P-384, OpenSSH format) whose public key is registered with
  ``flwr supernode register`` before the node starts. A node with an unregistered key is refused.
- Per-node config: SuperNode ``k`` runs with ``--node-config "partition-id=k num-partitions=N"``
  (plus any extra keys), so it is agent ``k`` of the experiment; heterogeneous environments come
  from ``client.heterogeneity`` (agent ``k``'s MDP is perturbed with its own seed).
- Every process gets its own working directory, ``FLWR_HOME`` and log file under ``workdir``,
  and is stopped by process id (SIGTERM, then SIGKILL), together with the helper processes
  Flower spawned for it, on normal exit, on exceptions and on Ctrl-C.

Library use (as in ``tests/test_deployment.py``)::

    with LocalFederation("/tmp/fed", num_nodes=3) as fed:
        result = fed.run(["strategy=importance", "num_clients=3", "num_rounds=3"])

Command line::

    python scripts/local_federation.py --nodes 3 -- strategy=importance num_rounds=3
    python scripts/local_federation.py --nodes 3 --serve   # keep it up for engine=deployment

``--simulation`` starts a simulation SuperLink instead (no SuperNodes; ``flwr run`` with
``num-supernodes``), the same runtime ``flwr run .`` starts on its own for local simulation.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from flower_qlearn import config as fq_config
from flower_qlearn.engine import (
    RunResult,
    default_output_dir,
    flwr_command,
    flwr_env,
    flwr_json,
    run_log,
    submit_run,
    wait_for_run,
    write_connection,
)

#: Name of the SuperLink connection in the federation's CLI ``FLWR_HOME/config.toml``.
CONNECTION = "local-federation"
HOST = "127.0.0.1"


# ------------------------------------------------------------------------------------------
# Credentials
# ------------------------------------------------------------------------------------------


def make_tls_certificates(directory: Path, hosts: tuple[str, ...] = (HOST, "localhost")) -> dict:
    """Write a CA and a CA-signed server certificate/key for ``hosts``; return their paths.

    The certificates are valid for one day: they exist for one local federation only.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=1)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flower-qlearn local CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )

    paths = {
        "ca": directory / "ca.crt",
        "cert": directory / "server.pem",
        "key": directory / "server.key",
    }
    paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    paths["key"].chmod(0o600)
    return paths


def make_node_key(path: Path) -> tuple[Path, Path]:
    """Write a SuperNode key pair: EC P-384 private key and ``.pub``, both OpenSSH format."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    public = path.with_name(path.name + ".pub")
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    return path, public


def free_port(host: str = HOST) -> int:
    """A TCP port that is free right now on ``host`` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------------------------------
# Processes
# ------------------------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Process ids of all descendants of ``pid`` (Linux ``/proc``; empty elsewhere)."""
    found: list[int] = []
    stack = [pid]
    while stack:
        parent = stack.pop()
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                kids = [int(c) for c in children.read_text().split()]
            except OSError:
                continue
            found.extend(kids)
            stack.extend(kids)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited; it only waits for its parent to reap it
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class Process:
    """A Flower process we started: its ``Popen``, log file, and the helpers it spawned."""

    name: str
    popen: subprocess.Popen
    log: Path
    helpers: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def remember_helpers(self) -> None:
        """Record the process ids Flower spawned (SuperExec, ServerApp/ClientApp processes).

        Flower starts its SuperExec in a new session, so it must be stopped by its own pid.
        """
        if self.running():
            self.helpers.update(descendants(self.pid))

    def terminate(self) -> None:
        """Ask the process to shut down cleanly (SIGTERM); :meth:`reap` waits for it."""
        self.remember_helpers()
        if self.running():
            _signal(self.pid, signal.SIGTERM)

    def reap(self, grace: float = 10.0) -> None:
        """Wait up to ``grace`` s for the process and its helpers, then SIGKILL what is left."""
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signal(self.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)
        # Helpers watch their parent's pid and exit shortly after it; make sure they did.
        deadline = time.monotonic() + grace
        while any(_alive(p) for p in self.helpers) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in self.helpers:
            if _alive(pid):
                _signal(pid, signal.SIGKILL)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, wait ``grace`` seconds, then SIGKILL the process and leftover helpers."""
        self.terminate()
        self.reap(grace)

    def kill(self) -> None:
        """SIGKILL the process now (fault injection): no clean shutdown, no goodbye."""
        self.remember_helpers()
        if self.running():
            _signal(self.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)


# ------------------------------------------------------------------------------------------
# The federation
# ------------------------------------------------------------------------------------------


class LocalFederation:
    """A SuperLink and ``num_nodes`` SuperNodes on 127.0.0.1, with TLS and node authentication.

    Parameters
    ----------
    workdir
        Everything goes here: certificates, keys, one directory and log per process, the
        CLI's ``FLWR_HOME``. ``None``: a new temporary directory.
    num_nodes
        SuperNodes to start; node ``k`` gets ``partition-id=k num-partitions=num_nodes``.
    tls
        Generate certificates and serve with them (default). ``False`` runs ``--insecure``.
    auth
        SuperNode authentication with registered keys (default; requires ``tls``).
    simulation
        Start a simulation SuperLink (``--simulation``) and no SuperNodes: runs use Flower's
        simulation runtime with ``num-supernodes`` virtual nodes.
    node_configs
        Extra node config per partition, e.g. ``[{"region": "eu"}, ...]``.
    """

    def __init__(
        self,
        workdir: str | Path | None = None,
        num_nodes: int = 3,
        *,
        tls: bool = True,
        auth: bool = True,
        simulation: bool = False,
        node_configs: list[dict] | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        if auth and not tls:
            raise ValueError("SuperNode authentication requires TLS (Flower refuses it otherwise)")
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="flower-qlearn-federation-"))
        self.workdir = self.workdir.resolve()
        self.num_nodes = 0 if simulation else int(num_nodes)
        self.tls, self.auth, self.simulation = tls, auth and not simulation, simulation
        self.node_configs = node_configs or []
        self.startup_timeout = startup_timeout
        self.port = 0
        self.certs: dict = {}
        self.superlink: Process | None = None
        self.supernodes: dict[str, Process] = {}  # by name: supernode-<k>, or as given
        self.authorized: set[str] = set()  # supernodes whose key is registered (or auth is off)
        self.node_ids: dict[int, int] = {}  # partition id -> node id registered at the SuperLink
        self.cli_env = flwr_env(self.workdir / "cli-home")

    # --- lifecycle --------------------------------------------------------------------------
    @property
    def address(self) -> str:
        """The SuperLink's address (Control, Fleet and Runtime API share one port in 1.41)."""
        return f"{HOST}:{self.port}"

    def start(self) -> LocalFederation:
        """Start the SuperLink, register the node keys, start the SuperNodes, wait until online."""
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            if self.tls:
                self.certs = make_tls_certificates(self.workdir / "certificates")
            self._start_superlink()
            write_connection(
                self.workdir / "cli-home",
                CONNECTION,
                self.address,
                root_certificates=self.certs.get("ca"),
                insecure=not self.tls,
            )
            if self.auth:  # register every node's public key first, concurrently
                publics = [
                    make_node_key(self.workdir / "keys" / f"supernode-{k}")[1]
                    for k in range(self.num_nodes)
                ]
                with ThreadPoolExecutor(max_workers=4) as pool:
                    self.node_ids.update(enumerate(pool.map(self.register_key, publics)))
            for k in range(self.num_nodes):
                self.start_supernode(k, wait=False)
            self.wait_for_nodes(self.num_nodes)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every SuperNode, then the SuperLink, by process id (helpers included)."""
        nodes = list(self.supernodes.values())
        for proc in nodes:  # all at once: each takes a few seconds to shut down
            proc.terminate()
        for proc in nodes:
            proc.reap()
        if self.superlink is not None:
            self.superlink.stop()

    def __enter__(self) -> LocalFederation:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- processes --------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> Process:
        home = self.workdir / name
        home.mkdir(parents=True, exist_ok=True)
        log = self.workdir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as fh:
            popen = subprocess.Popen(
                [flwr_command(args[0]), *args[1:]],
                cwd=home,
                env=flwr_env(home / "flwr-home"),
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return Process(name, popen, log)

    def _start_superlink(self) -> None:
        self.port = free_port()
        args = ["flower-superlink", "--host", HOST, "--port", str(self.port)]
        if self.tls:
            args += [
                "--ssl-ca-certfile",
                str(self.certs["ca"]),
                "--ssl-certfile",
                str(self.certs["cert"]),
                "--ssl-keyfile",
                str(self.certs["key"]),
            ]
        else:
            args.append("--insecure")
        if self.auth:
            args.append("--enable-supernode-auth")
        if self.simulation:
            args.append("--simulation")
        self.superlink = self._spawn("superlink", args)
        self._wait_for_superlink()

    def _wait_for_superlink(self) -> None:
        import httpx

        scheme = "https" if self.tls else "http"
        verify = ssl.create_default_context(cafile=str(self.certs["ca"])) if self.tls else False
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if not self.superlink.running():
                raise RuntimeError(f"flower-superlink exited; see {self.superlink.log}")
            try:
                if httpx.get(
                    f"{scheme}://{self.address}/health", verify=verify, timeout=1
                ).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"SuperLink not up after {self.startup_timeout:.0f} s; see its log")

    def register_key(self, public_key: Path) -> int:
        """Register a SuperNode public key with the SuperLink; return the node id it assigns."""
        payload = flwr_json(["supernode", "register", str(public_key), CONNECTION], self.cli_env)
        return int(payload["node-id"])

    def start_supernode(
        self,
        partition_id: int,
        *,
        register: bool = True,
        name: str | None = None,
        wait: bool = True,
    ) -> Process:
        """Start the SuperNode of agent ``partition_id`` (with its own key and node config).

        ``register=False`` starts it with a key the SuperLink does not know (auth test).
        """
        name = name or f"supernode-{partition_id}"
        node_config = {"partition-id": partition_id, "num-partitions": max(self.num_nodes, 1)}
        if partition_id < len(self.node_configs):
            node_config.update(self.node_configs[partition_id])
        args = [
            "flower-supernode",
            "--superlink",
            self.address,
            "--port",
            str(free_port()),  # the SuperNode's own Runtime API (ClientApp <-> SuperNode)
            "--node-config",
            " ".join(f"{k}={json.dumps(v)}" for k, v in node_config.items()),
        ]
        args += ["--root-certificates", str(self.certs["ca"])] if self.tls else ["--insecure"]
        if self.tls:
            # Flower signs every Fleet request with the node's key when one is given.
            key = self.workdir / "keys" / name
            if not key.is_file():  # else made (and registered) by start()
                _, public = make_node_key(key)
                if self.auth and register:
                    self.node_ids[partition_id] = self.register_key(public)
            args += ["--auth-supernode-private-key", str(key)]
        proc = self._spawn(name, args)
        self.supernodes[name] = proc
        if register or not self.auth:
            self.authorized.add(name)
            if wait:
                self.wait_for_nodes(sum(self.supernodes[n].running() for n in self.authorized))
        return proc

    def nodes(self) -> list[dict]:
        """The SuperLink's node list (``flwr supernode ls``): node-id, status, ..."""
        return list(flwr_json(["supernode", "ls", CONNECTION], self.cli_env)["nodes"])

    def online_node_ids(self) -> set[int]:
        return {int(n["node-id"]) for n in self.nodes() if n["status"] == "online"}

    def wait_for_nodes(self, count: int) -> None:
        """Wait until ``count`` authorized SuperNodes have joined (their log shows a node id)."""
        deadline = time.monotonic() + self.startup_timeout
        while True:
            joined = 0
            for name in self.authorized:
                proc = self.supernodes[name]
                if not proc.running():
                    raise RuntimeError(f"{name} exited; see {proc.log}")
                # Flower logs "SuperNode ID: <id>" once the SuperLink has activated the node.
                joined += "SuperNode ID:" in proc.log.read_text(errors="replace")
            if joined >= count:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {count} SuperNodes joined; see {self.workdir}/logs")
            time.sleep(0.3)
        for proc in self.supernodes.values():
            proc.remember_helpers()

    # --- runs -------------------------------------------------------------------------------
    def submit(
        self,
        overrides: list[str],
        output_dir: str | Path | None = None,
        *,
        num_supernodes: int | None = None,
    ) -> tuple[int, Path]:
        """Submit ``flwr run`` of this project with Hydra ``overrides``; return (run id, outdir)."""
        items = list(overrides)
        out = Path(output_dir or fq_config.compose(items).output_dir or default_output_dir())
        out = out.resolve()
        run_config = {
            fq_config.OVERRIDES_KEY: fq_config.overrides_to_str(items),
            fq_config.OUTPUT_DIR_KEY: str(out),
        }
        federation_config = None
        if self.simulation:
            num = num_supernodes or int(fq_config.compose(items).num_clients)
            # One CPU per virtual client (Flower's default is 2, i.e. serial on 2 cores).
            federation_config = {"num-supernodes": num, "client-resources-num-cpus": 1}
        run_id = submit_run(
            run_config, CONNECTION, self.cli_env, federation_config=federation_config
        )
        return run_id, out

    def wait(self, run_id: int, timeout: float = 600.0) -> str:
        """Wait until run ``run_id`` finishes; return its final status."""
        return wait_for_run(run_id, CONNECTION, self.cli_env, timeout=timeout, poll_interval=1.0)

    def run(
        self,
        overrides: list[str],
        output_dir: str | Path | None = None,
        *,
        timeout: float = 600.0,
        num_supernodes: int | None = None,
    ) -> RunResult:
        """Submit a run, wait for it and read its outputs back (raise if it did not complete)."""
        run_id, out = self.submit(overrides, output_dir, num_supernodes=num_supernodes)
        status = self.wait(run_id, timeout)
        if status != "finished:completed":
            tail = run_log(run_id, CONNECTION, self.cli_env)[-3000:]
            raise RuntimeError(f"run {run_id} ended {status}; its log ends:\n{tail}")
        return RunResult.load(out)

    def run_log(self, run_id: int) -> str:
        return run_log(run_id, CONNECTION, self.cli_env)


# ------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM (e.g. from a CI runner) takes the same clean path as Ctrl-C.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """``python scripts/local_federation.py --nodes 3 -- strategy=importance num_rounds=3``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=3, help="SuperNodes to start (default 3)")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new temp dir")
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
    )
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        fed.start()
        print(f"SuperLink {fed.address} (pid {fed.superlink.pid}); logs in {fed.workdir}/logs")
        for k in range(args.nodes if not args.simulation else 0):
            proc = fed.supernodes[f"supernode-{k}"]
            print(f"  SuperNode partition-id={k} pid {proc.pid} node-id {fed.node_ids.get(k)}")
        if args.serve:
            ca = fed.certs.get("ca")
            tls = f" engine.root_certificates={ca}" if ca else " engine.insecure=true"
            print(
                "Serving until Ctrl-C. Submit with:\n  flower-qlearn engine=deployment "
                f"engine.address={fed.address}{tls} "
                f"output_dir=$PWD/outputs/deployment {shlex.join(overrides)}"
            )
            while fed.superlink.running():
                time.sleep(1.0)
            return 1
        started = time.perf_counter()
        result = fed.run(overrides, args.output_dir)
        final = result.history[-1] if result.history else {}
        key = "gain_error" if final.get("gain_error") is not None else "q_error"
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
