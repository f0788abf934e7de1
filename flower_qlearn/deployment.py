"""Submitting the Flower App to a SuperLink with the ``flwr`` CLI (``engine=deployment``).

Real Flower infrastructure is driven the way a user drives it: ``flwr run`` bundles this project
into a FAB and submits it to a SuperLink connection, ``flwr ls`` polls the run's status, ``flwr
log`` fetches its log. Every ``flwr`` process gets its own ``FLWR_HOME`` (where the CLI keeps its
SuperLink connections), so nothing touches the user's ``~/.flwr``. The same helpers drive a
local federation (:mod:`flower_qlearn.federation`) and the Ray engine
(:mod:`flower_qlearn.ray_engine`), which submit to a SuperLink they started themselves.

This module depends on Flower's CLI only, never on the in-process engine: the engines import it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import progress

log = logging.getLogger("flower_qlearn")

#: SuperLink connection written into a private ``FLWR_HOME`` when ``engine.connection`` is null.
DEPLOYMENT_CONNECTION = "flower-qlearn"


class DeploymentError(RuntimeError):
    """A deployment run could not start or did not complete; the message is one line saying
    what failed and what to do (the CLI prints it as is, exit status 1)."""


def one_line(text: str) -> str:
    """``text`` with its whitespace (newlines included) collapsed to single spaces."""
    return " ".join(str(text).split())


def superlink_unreachable(address: str, timeout: float = 3.0) -> str | None:
    """Why nothing accepts TCP connections at ``address`` (host:port), or None if something
    does: checked in a moment, where ``flwr run`` retries for about 20 s before it gives up."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return None
    except (OSError, ValueError) as exc:
        return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def project_dir() -> Path:
    """The Flower App directory that ``flwr run`` bundles into a FAB: this project's root."""
    from .config import ConfigError

    root = Path(__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        raise ConfigError(
            f"invalid config: engine.app_dir is null but {root} has no pyproject.toml "
            "(installed without sources); set engine.app_dir to a flower-qlearn checkout"
        )
    return root


def flwr_command(name: str = "flwr") -> str:
    """Path of a Flower executable (``flwr``, ``flower-superlink``, ...): venv first, then PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name!r} is neither beside {sys.executable} nor on PATH")
    return found


def flwr_env(flwr_home: str | Path, base: dict | None = None) -> dict[str, str]:
    """Environment for Flower CLI/runtime processes: their own ``FLWR_HOME``, offline-safe.

    Runtime dependency installation (``uv sync`` per run) is off because the project is already
    installed and it needs the network; so are the update check and telemetry. The interpreter's
    bin directory goes first on ``PATH`` because ``flwr`` and the SuperLink spawn
    ``flower-superlink``/``flower-superexec``/``flwr-serverapp`` by name.
    """
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "FLWR_HOME": str(Path(flwr_home).expanduser().resolve()),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
        }
    )
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def write_connection(
    flwr_home: str | Path,
    name: str,
    address: str,
    *,
    root_certificates: str | Path | None = None,
    insecure: bool = False,
) -> Path:
    """Add SuperLink connection ``name`` to ``FLWR_HOME/config.toml`` (the Flower CLI config)."""
    import tomllib

    import tomli_w

    path = Path(flwr_home) / "config.toml"
    data = tomllib.loads(path.read_text()) if path.is_file() else {}
    links = data.setdefault("superlink", {})
    conn: dict = {"address": str(address)}
    if insecure:
        conn["insecure"] = True
    elif root_certificates:
        conn["root-certificates"] = str(Path(root_certificates).expanduser().resolve())
    links[name] = conn
    links.setdefault("default", name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(data))
    return path


def flwr_json(args: Sequence[str], env: dict, timeout: float = 120.0) -> dict:
    """Run ``flwr ARGS --format json`` and return its JSON answer; raise on failure."""
    proc = subprocess.run(
        [flwr_command(), *args, "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    start, end = proc.stdout.find("{"), proc.stdout.rfind("}")
    try:
        payload = json.loads(proc.stdout[start : end + 1]) if 0 <= start < end else {}
    except json.JSONDecodeError:
        payload = {}
    if proc.returncode != 0 or not payload.get("success", False):
        detail = payload.get("error-message") or (proc.stderr or proc.stdout).strip()[-2000:]
        code = f" (exit {proc.returncode})" if proc.returncode else ""
        raise RuntimeError(f"`flwr {' '.join(args)}` failed{code}: {one_line(detail)}")
    return payload


def submit_run(
    run_config: dict,
    connection: str,
    env: dict,
    *,
    app_dir: str | Path | None = None,
    federation_config: dict | None = None,
) -> int:
    """Submit the Flower App to the SuperLink of ``connection`` with ``flwr run``; return its id.

    The run config travels as a TOML file, so values need no shell quoting; a key with dots
    (``"strategy.name"``) is written quoted and Flower reads it back as that one flat key.
    ``federation_config`` (e.g. ``{"num-supernodes": 3}``) configures a simulation SuperLink.
    """
    import tomli_w

    app = Path(app_dir).expanduser().resolve() if app_dir else project_dir()
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as fh:
        fh.write(tomli_w.dumps({str(k): v for k, v in run_config.items()}))
    try:
        args = ["run", str(app), connection, "--run-config", fh.name]
        if federation_config:
            # key=value pairs, values as TOML scalars (JSON's spelling agrees for these)
            pairs = " ".join(f"{k}={json.dumps(v)}" for k, v in federation_config.items())
            args += ["--federation-config", pairs]
        payload = flwr_json(args, env)
    finally:
        os.unlink(fh.name)
    return int(payload["run-id"])


def run_status(run_id: int, connection: str, env: dict) -> str:
    """Status of a run on the SuperLink, e.g. ``running`` or ``finished:completed``."""
    payload = flwr_json(["ls", connection, "--run-id", str(run_id)], env)
    return str(payload["runs"][0]["status"])


def run_log(run_id: int, connection: str, env: dict) -> str:
    """The run's log as kept by the SuperLink (``flwr log --show``)."""
    proc = subprocess.run(
        [flwr_command(), "log", str(run_id), connection, "--show"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.stdout + proc.stderr


#: Lines of a run's log that the launchers echo on the user's terminal.
ECHOED = (progress.MARKER, "flower-qlearn:", "[job ")


def follow_log(
    run_id: int, connection: str, env: dict, on_line: Callable[[str], None]
) -> subprocess.Popen:
    """Stream the run's log (``flwr log --stream``) and hand its progress lines to ``on_line``.

    Flower's own prefix is cut, so the user sees the ServerApp's lines as an in-process run
    prints them. Returns the streaming process; terminate it when the run has finished.
    """
    proc = subprocess.Popen(
        [flwr_command(), "log", str(run_id), connection, "--stream"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            starts = [i for i in (raw.find(tag) for tag in ECHOED) if i >= 0]
            if starts:
                on_line(raw[min(starts) :].rstrip())

    threading.Thread(target=pump, name=f"flwr-log-{run_id}", daemon=True).start()
    return proc


def wait_for_run(
    run_id: int,
    connection: str,
    env: dict,
    *,
    timeout: float = 3600.0,
    poll_interval: float = 2.0,
    on_line: Callable[[str], None] | None = None,
) -> str:
    """Poll the run's status until it is finished; stop it and raise after ``timeout`` seconds.

    ``on_line``: receives the run's progress lines while it runs (:func:`follow_log`).
    """
    follower = follow_log(run_id, connection, env, on_line) if on_line else None
    try:
        return _wait(run_id, connection, env, timeout, poll_interval)
    finally:
        if follower is not None:
            time.sleep(min(poll_interval, 1.0))  # the last lines are still on their way
            follower.terminate()
            try:
                follower.wait(timeout=10)
            except subprocess.TimeoutExpired:
                follower.kill()


def echo(line: str) -> None:
    """Print a followed progress line through this package's logger (the user's terminal)."""
    log.info("%s", line)


def _wait(run_id: int, connection: str, env: dict, timeout: float, poll_interval: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = run_status(run_id, connection, env)
        if status.startswith("finished"):
            return status
        if time.monotonic() > deadline:
            subprocess.run(
                [flwr_command(), "stop", str(run_id), connection],
                env=env,
                capture_output=True,
                timeout=60,
                check=False,
            )
            raise TimeoutError(
                f"run {run_id} still {status} after {timeout:.0f} s (engine.run_timeout); stopped"
            )
        time.sleep(poll_interval)


def run_deployment(cfg: Any, run_config: dict) -> None:
    """Submit the composed run to the SuperLink of ``cfg.engine`` with ``flwr run``; wait for it.

    ``cfg`` is the composed config (an OmegaConf ``DictConfig`` or any object with attribute
    access); ``run_config`` travels to the apps as given. The SuperLink's ServerApp composes the
    same config from it and writes the outputs into the run config's output directory
    (absolute), which this host must see (same machine or a shared file system) for the caller
    to read them back. SuperNodes must be running, one per agent, with
    ``--node-config "partition-id=k num-partitions=K"``.
    """
    from .config import ConfigError

    e = cfg.engine
    if e.root_certificates and not e.insecure and not Path(e.root_certificates).is_file():
        raise ConfigError(
            f"invalid config: engine.root_certificates={e.root_certificates!r} is not a file"
        )
    own_home = not e.flwr_home
    flwr_home = (
        Path(tempfile.mkdtemp(prefix="flower-qlearn-flwr-home-"))
        if own_home
        else Path(e.flwr_home).expanduser()
    )
    try:
        env = flwr_env(flwr_home)
        connection = e.connection or DEPLOYMENT_CONNECTION
        if not e.connection:
            write_connection(
                flwr_home,
                connection,
                e.address,
                root_certificates=e.root_certificates,
                insecure=bool(e.insecure),
            )
            _check_superlink(e.address, bool(e.insecure))
        try:
            run_id = submit_run(run_config, connection, env, app_dir=e.app_dir)
        except RuntimeError as exc:
            raise DeploymentError(
                f"engine=deployment: submitting the run to {e.address or connection} failed: "
                f"{one_line(exc)} (check engine.address={e.address}, engine.root_certificates="
                f"{e.root_certificates}, engine.insecure={e.insecure}, engine.connection="
                f"{e.connection}; the SuperLink must be running)"
            ) from None
        log.info("flower-qlearn: submitted run %s to SuperLink %s", run_id, e.address or connection)
        status = wait_for_run(
            run_id,
            connection,
            env,
            timeout=float(e.run_timeout),
            poll_interval=float(e.poll_interval),
            on_line=echo,
        )
        if status != "finished:completed":
            tail = run_log(run_id, connection, env)[-3000:]
            log.error("deployment run %s ended %s; its log ends:\n%s", run_id, status, tail)
            last = next((ln for ln in reversed(tail.splitlines()) if ln.strip()), "")
            raise DeploymentError(
                f"engine=deployment: run {run_id} on {e.address or connection} ended {status}; "
                f"its last log line: {one_line(last)[-300:]}"
            )
        out = output_dir_of(run_config)
        if out is not None and not (out / "summary.json").is_file():
            raise DeploymentError(
                f"deployment run {run_id} completed but {out} has no summary.json: the SuperLink "
                "writes outputs on its own host; use a directory both machines see"
            )
    finally:
        if own_home:
            shutil.rmtree(flwr_home, ignore_errors=True)


def _check_superlink(address: str, insecure: bool) -> None:
    """Refuse at once, in one line, when no SuperLink listens at ``address``."""
    why = superlink_unreachable(address)
    if why is not None:
        start = "flower-superlink" + (" --insecure" if insecure else " (with its TLS certificates)")
        raise DeploymentError(
            f"engine=deployment: no SuperLink reachable at engine.address={address} ({why}); "
            f"start one ({start}, or python scripts/local_federation.py) with its SuperNodes, "
            "or point engine.address at a running one"
        )


def output_dir_of(run_config: dict) -> Path | None:
    """The output directory a run config names (``output_dir`` or the older ``output-dir``)."""
    from . import config as fq_config

    keys = (getattr(fq_config, "OUTPUT_DIR_KEY", "output_dir"), "output_dir", "output-dir")
    for key in keys:
        if run_config.get(key):
            return Path(run_config[key])
    return None
