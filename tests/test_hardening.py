"""Hardening: checkpoints without pickle, faults survived, fewer (or more) nodes than agents.

Every bad checkpoint below is really written to disk and resumed from, through the Python API
and through the CLI: each is refused with one line naming what is wrong (exit status 2 on the
command line), before any output is written. Faults are injected into real ClientApps running
on the real in-process grid.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from flower_qlearn.strategies import base
from flower_qlearn.strategies.base import value_bound
from flwr.app import Message
from flwr.clientapp import ClientApp

from flower_qlearn import checkpoint, run_experiment
from flower_qlearn import config as fq_config
from flower_qlearn.api import run_config_for
from flower_qlearn.client_app import app as client_app
from flower_qlearn.client_app import handle_train
from flower_qlearn.inprocess import run_inprocess
from flower_qlearn.outputs import RunResult
from flower_qlearn.server_app import app as server_app

COMMON = ["strategy=importance", "num_clients=3", "client.local_steps=20", "log_every=0",
          "figures=false"]


def _without_wall(history):
    return [{k: v for k, v in row.items() if k != "wall_s"} for row in history]


# ------------------------------------------------------------------------------------------
# A. Checkpoints without pickle
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A good checkpoint: 4 rounds of COMMON (num_rounds=4, checkpoint_every=2)."""
    out = tmp_path_factory.mktemp("ckpt") / "run"
    run_experiment(COMMON + ["num_rounds=4", "checkpoint_every=2", f"output_dir={out}"])
    assert (out / checkpoint.CHECKPOINT_NAME).is_file()
    return out


class Payload:
    """Unpickling this creates ``marker``: what a planted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _live_pickle(tmp_path: Path, marker: Path) -> bytes:
    """A pickle payload, checked to be live (unpickling it does create its marker)."""
    probe = tmp_path / "probe-marker"
    probe.unlink(missing_ok=True)
    pickle.loads(pickle.dumps(Payload(probe))).close()
    assert probe.exists()  # the payload really runs code when unpickled
    probe.unlink()
    return pickle.dumps(Payload(marker))


def _state(run_dir: Path) -> dict:
    meta, arrays = checkpoint.read_archive(run_dir / checkpoint.CHECKPOINT_NAME)
    return checkpoint.decode(meta["state"], arrays)


def _rewritten(run_dir: Path, dst: Path, mutate) -> Path:
    """A copy of ``run_dir``'s checkpoint with ``mutate(state)`` applied, hash recomputed."""
    dst.mkdir(parents=True)
    state = _state(run_dir)
    mutate(state)
    checkpoint.write(dst / checkpoint.CHECKPOINT_NAME, state)
    return dst


def _raw(run_dir: Path, dst: Path, edit) -> Path:
    """A copy of ``run_dir``'s checkpoint file with its bytes edited by ``edit(bytes)``."""
    dst.mkdir(parents=True)
    data = (run_dir / checkpoint.CHECKPOINT_NAME).read_bytes()
    (dst / checkpoint.CHECKPOINT_NAME).write_bytes(edit(data))
    return dst


def _members(run_dir: Path, dst: Path, edit) -> Path:
    """A copy whose zip members (name -> bytes) are edited by ``edit``: valid CRCs."""
    dst.mkdir(parents=True)
    with zipfile.ZipFile(run_dir / checkpoint.CHECKPOINT_NAME) as zin:
        members = {name: zin.read(name) for name in zin.namelist()}
    edit(members)
    with zipfile.ZipFile(dst / checkpoint.CHECKPOINT_NAME, "w") as zout:
        for name, data in members.items():
            zout.writestr(name, data)
    return dst


def _meta_edit(change):
    def edit(members):
        array = np.load(io.BytesIO(members["meta.npy"]))
        meta = json.loads(array.tobytes().decode())
        change(meta)
        buf = io.BytesIO()
        np.save(buf, np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
        members["meta.npy"] = buf.getvalue()

    return edit


def _flip_bit_in_q(data: bytes) -> bytes:
    """Flip one bit inside the stored bytes of the Q-table member."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        q_key = json.loads(np.load(io.BytesIO(z.read("meta.npy"))).tobytes())
        q_member = q_key["state"]["q"]["$array"] + ".npy"
        info = z.getinfo(q_member)
    # local header: 30 bytes + name + extra, then the data (stored, not compressed)
    name_len = int.from_bytes(data[info.header_offset + 26: info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28: info.header_offset + 30], "little")
    at = info.header_offset + 30 + name_len + extra_len + info.file_size - 3  # inside the table
    out = bytearray(data)
    out[at] ^= 0x10
    return bytes(out)


def _object_member(marker: Path, tmp_path: Path):
    payload = _live_pickle(tmp_path, marker)

    def edit(members):
        # An object array's .npy is its header then a pickle: put the payload there.
        buf = io.BytesIO()
        np.save(buf, np.array([None], dtype=object))
        raw = buf.getvalue()
        header_end = raw.index(b"\n") + 1
        members["a0.npy"] = raw[:header_end] + payload

    return edit


def _bad_checkpoints(run_dir: Path, tmp_path: Path, marker: Path) -> dict:
    """Name -> (resume target, overrides, expected message part), every one on disk."""
    bound = value_bound(fq_config.compose(COMMON).mdp.gamma)
    pkl_dir = tmp_path / "planted"
    pkl_dir.mkdir()
    (pkl_dir / "checkpoint.pkl").write_bytes(_live_pickle(tmp_path, marker))
    history5000 = [{"round": i, "samples_per_agent": 20 * i} for i in range(1, 5001)]
    cases = {
        "planted checkpoint.pkl": (pkl_dir, [], "has only checkpoint.pkl"),
        "pickle file given directly": (pkl_dir / "checkpoint.pkl", [], "not an .npz archive"),
        "pickle inside the npz": (
            _members(run_dir, tmp_path / "objnpz", _object_member(marker, tmp_path)),
            [], "not a checkpoint (Object arrays cannot be loaded",
        ),
        "truncated": (_raw(run_dir, tmp_path / "trunc", lambda b: b[: len(b) // 2]), [],
                      "corrupt, truncated"),
        "flipped bit": (_raw(run_dir, tmp_path / "flip", _flip_bit_in_q), [], "Bad CRC-32"),
        "hash mismatch": (
            _members(run_dir, tmp_path / "hash",
                     _meta_edit(lambda m: m["state"].__setitem__("samples", 1.0))),
            [], "SHA-256 does not match",
        ),
        "wrong version": (
            _members(run_dir, tmp_path / "version",
                     _meta_edit(lambda m: m.__setitem__("version", 1))),
            [], "format version 1; this flower-qlearn reads version 2 only",
        ),
        "NaN in Q": (
            _rewritten(run_dir, tmp_path / "nan", lambda s: s["q"].__setitem__((0, 0), np.nan)),
            [], "non-finite values",
        ),
        "1e300 in Q": (
            _rewritten(run_dir, tmp_path / "huge",
                       lambda s: s["q"].__setitem__((1, 0), 1e300)),
            [], f"|Q| = 1e+300 > the value bound {bound:.6g}",
        ),
        "wrong Q shape": (
            _rewritten(run_dir, tmp_path / "shape",
                       lambda s: s.__setitem__("q", np.zeros((3, 3)))),
            [], "has shape (3, 3), this experiment (2, 10)",
        ),
        "5000-row history for 100 rounds": (
            _rewritten(run_dir, tmp_path / "long",
                       lambda s: s.update(history=history5000, round=5000)),
            ["num_rounds=100"], "has 5000 rounds done but this run has 100 rounds",
        ),
        "fewer rounds than done": (run_dir, ["num_rounds=3"],
                                   "has 4 rounds done but this run has 3 rounds"),
        "history rows out of order": (
            _rewritten(run_dir, tmp_path / "order",
                       lambda s: s["history"][1].__setitem__("round", 7)),
            [], "history row 2 is of round 7",
        ),
        "agents' state of a stranger partition": (
            _rewritten(run_dir, tmp_path / "grid",
                       lambda s: s["grid"].__setitem__(99, {"agent": {"state": 0}})),
            [], "names partition 99",
        ),
        "another experiment": (run_dir, ["seed=9"], "different experiment (differs in ['seed'])"),
        "no checkpoint": (tmp_path / "nowhere", [], "no checkpoint at"),
    }
    return cases


CASES = [
    "planted checkpoint.pkl", "pickle file given directly", "pickle inside the npz", "truncated",
    "flipped bit", "hash mismatch", "wrong version", "NaN in Q", "1e300 in Q", "wrong Q shape",
    "5000-row history for 100 rounds", "fewer rounds than done", "history rows out of order",
    "agents' state of a stranger partition", "another experiment", "no checkpoint",
]
#: Also checked through the CLI (a subprocess each: ~2 s).
CLI_CASES = ["planted checkpoint.pkl", "pickle inside the npz", "truncated", "flipped bit",
             "wrong version", "1e300 in Q", "5000-row history for 100 rounds",
             "fewer rounds than done"]


def test_the_good_checkpoint_holds_no_pickle_and_its_hash_checks(run_dir):
    path = run_dir / checkpoint.CHECKPOINT_NAME
    with zipfile.ZipFile(path) as z:
        names = sorted(z.namelist())
    assert names[-1] == "meta.npy" and all(n.startswith("a") for n in names[:-1])
    with np.load(path, allow_pickle=False) as npz:  # loads: no object arrays anywhere
        meta = json.loads(npz["meta"].tobytes().decode())
        arrays = {k: npz[k] for k in npz.files if k != "meta"}
    assert meta["format"] == checkpoint.FORMAT and meta["version"] == 2
    assert meta["sha256"] == checkpoint.content_hash(meta["state"], arrays)
    assert meta["state"]["round"] == 4 and len(meta["state"]["history"]) == 4
    assert not (run_dir / "checkpoint.pkl").exists()


def test_encoding_round_trips_python_and_numpy_values_exactly():
    value = {
        "buffer": {3: [(1, {"g": np.arange(6.0).reshape(2, 3), "computed_at": 2})]},
        "rejections": [(2, 1001, "bad reply")],
        "x": [0.1, 1e-300, float("nan"), None, True, "s", b"\x00\xff"],
        "$weird": np.array([1, 2], dtype=np.int64),
    }
    arrays: dict = {}
    data = checkpoint.encode(value, arrays)
    text = json.dumps(data)
    back = checkpoint.decode(json.loads(text), arrays)
    assert list(back) == list(value)
    g = back["buffer"][3][0][1]["g"]
    np.testing.assert_array_equal(g, value["buffer"][3][0][1]["g"])
    assert isinstance(back["buffer"][3][0], tuple)
    assert back["rejections"] == [(2, 1001, "bad reply")]
    x = back["x"]
    assert x[:2] == [0.1, 1e-300] and np.isnan(x[2]) and x[3:] == [None, True, "s", b"\x00\xff"]
    assert back["$weird"].dtype == np.int64
    with pytest.raises(TypeError, match="object arrays"):
        checkpoint.encode(np.array([object()], dtype=object), {})


@pytest.mark.parametrize("case", CASES)
def test_a_bad_checkpoint_is_refused_in_one_line_before_anything_is_written(
    case, run_dir, tmp_path
):
    marker = tmp_path / "PWNED"
    target, overrides, message = _bad_checkpoints(run_dir, tmp_path, marker)[case]
    out = tmp_path / "out"
    with pytest.raises(fq_config.ConfigError) as info:
        run_experiment(COMMON + ["num_rounds=8", *overrides, f"resume={target}",
                                 f"output_dir={out}"])
    text = str(info.value)
    assert text.startswith("resume: ") and "\n" not in text
    assert message in text
    assert not out.exists()
    assert not marker.exists()  # a planted pickle never ran


def test_bad_checkpoints_on_the_command_line_exit_2_with_one_line(run_dir, tmp_path):
    marker = tmp_path / "PWNED"
    cases = _bad_checkpoints(run_dir, tmp_path, marker)
    before = (run_dir / checkpoint.CHECKPOINT_NAME).read_bytes()
    for case in CLI_CASES:
        target, overrides, message = cases[case]
        cwd = tmp_path / f"cwd-{CLI_CASES.index(case)}"
        cwd.mkdir()
        out = cwd / "out"
        proc = subprocess.run(
            [sys.executable, "-m", "flower_qlearn", *COMMON, "num_rounds=8", *overrides,
             f"resume={target}", f"output_dir={out}"],
            cwd=cwd, capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 2, (case, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("flower-qlearn: resume: "), (case, lines)
        assert message in lines[0], (case, lines[0])
        assert "Traceback" not in proc.stderr and proc.stdout == ""
        assert list(cwd.iterdir()) == [], case  # no outputs/, no output dir
        assert not marker.exists()
    assert (run_dir / checkpoint.CHECKPOINT_NAME).read_bytes() == before  # read only


def test_a_malformed_strategy_state_is_refused_and_dasa_state_round_trips(tmp_path):
    dasa = ["strategy=dasa", "num_clients=3", "log_every=0", "figures=false"]
    full = run_experiment(dasa + ["num_rounds=10", f"output_dir={tmp_path / 'full'}"])
    run_experiment(dasa + ["num_rounds=6", "checkpoint_every=3", f"output_dir={tmp_path / 'a'}"])
    state = _state(tmp_path / "a")
    assert any(isinstance(v, np.ndarray) for v in checkpoint._arrays_in(state["strategy"]))
    resumed = run_experiment(dasa + ["num_rounds=10", f"resume={tmp_path / 'a'}",
                                     f"output_dir={tmp_path / 'b'}"])
    np.testing.assert_array_equal(resumed.q_table, full.q_table)
    assert _without_wall(resumed.history) == _without_wall(full.history)
    bad = _rewritten(tmp_path / "a", tmp_path / "bad",
                     lambda s: s["strategy"].__setitem__("buffer", {}))
    with pytest.raises(fq_config.ConfigError) as info:
        run_experiment(dasa + ["num_rounds=10", f"resume={bad}", f"output_dir={tmp_path / 'c'}"])
    assert "the strategy state does not load (missing key 'max_staleness')" in str(info.value)
    assert "\n" not in str(info.value) and not (tmp_path / "c").exists()


def test_resume_in_the_server_app_checks_the_checkpoint_too(run_dir, tmp_path):
    # A run config reaching the ServerApp directly (flwr run) is validated there as well.
    bad = _rewritten(run_dir, tmp_path / "nan", lambda s: s["q"].__setitem__((0, 0), np.nan))
    cfg = fq_config.compose(COMMON + ["num_rounds=8"])
    run_config = run_config_for(cfg, tmp_path / "out")
    run_config["resume"] = str(bad)
    fq_config._RUN_CACHE.clear()
    with pytest.raises(fq_config.ConfigError, match="non-finite"):
        run_inprocess(server_app, client_app, 3, run_config=run_config)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------
# B. Faults survived (in-process engine)
# ------------------------------------------------------------------------------------------


def _faulty_app(fault: str, release: threading.Event | None = None) -> ClientApp:
    """Our ClientApp, except that partition 1 misbehaves as ``fault`` says."""
    app = ClientApp()

    @app.train()
    def train(message: Message, context):
        if int(context.node_config["partition-id"]) == 1:
            if fault == "system_exit":
                raise SystemExit(3)
            if fault == "base_exception":
                raise GeneratorExit("a BaseException that is not an Exception")
            if fault == "not_a_message":
                return {"q": 0.0}
            if fault == "keyboard_interrupt":
                raise KeyboardInterrupt
            if fault == "hang":
                release.wait()  # hangs until the test is over
        return handle_train(message, context)

    return app


def _run(app, tmp_path, overrides, *, concurrent=False, num_supernodes=3) -> RunResult:
    cfg = fq_config.compose(COMMON + overrides)
    out = tmp_path / "out"
    run_inprocess(server_app, app, num_supernodes, run_config=run_config_for(cfg, out),
                  concurrent=concurrent)
    return RunResult.load(out)


@pytest.mark.parametrize("concurrent", [False, True])
@pytest.mark.parametrize("fault", ["system_exit", "base_exception", "not_a_message"])
def test_a_client_fault_is_a_rejected_reply_not_the_end_of_the_run(fault, concurrent, tmp_path):
    result = _run(_faulty_app(fault), tmp_path, ["num_rounds=3"], concurrent=concurrent)
    assert [(r["accepted"], r["rejected"], r["missing"]) for r in result.history] == [(2, 1, 0)] * 3
    assert result.summary["rejected_total"] == 3


@pytest.mark.parametrize("concurrent", [False, True])
def test_a_client_keyboard_interrupt_still_stops_the_run(concurrent, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _run(_faulty_app("keyboard_interrupt"), tmp_path, ["num_rounds=3"],
             concurrent=concurrent)
    assert not (tmp_path / "out" / "summary.json").exists()


@pytest.mark.parametrize("concurrent", [False, True])
def test_a_hung_client_is_abandoned_after_round_timeout_in_every_mode(concurrent, tmp_path):
    _run(client_app, tmp_path / "warm", ["num_rounds=1"])  # compile the kernels first
    release = threading.Event()
    try:
        result = _run(_faulty_app("hang", release), tmp_path,
                      ["num_rounds=3", "round_timeout=3"], concurrent=concurrent)
    finally:
        release.set()
    rows = [(r["accepted"], r["missing"]) for r in result.history]
    if concurrent:
        assert rows == [(2, 1)] * 3  # node 1 hung in round 1, skipped while busy after
    else:
        # Sequential: node 0 answers; node 1 hangs and uses up round 1's budget, so node 2's
        # call is not made; later rounds skip busy node 1 and hear from 0 and 2.
        assert rows == [(1, 2), (2, 1), (2, 1)]
    assert len(result.history) == 3


def test_sequential_mode_gives_the_same_numbers_as_before(tmp_path):
    # The worker thread changes nothing in a normal run (bit-for-bit, concurrent too).
    seq = _run(client_app, tmp_path / "s", ["num_rounds=4"])
    conc = _run(client_app, tmp_path / "c", ["num_rounds=4"], concurrent=True)
    ref = run_experiment(COMMON + ["num_rounds=4", f"output_dir={tmp_path / 'r'}"])
    np.testing.assert_array_equal(seq.q_table, ref.q_table)
    np.testing.assert_array_equal(conc.q_table, ref.q_table)
    assert _without_wall(seq.history) == _without_wall(ref.history)


class _Nodes:
    """A grid's node list that the test changes between calls."""

    def __init__(self, ids):
        self.ids = list(ids)

    def get_node_ids(self):
        return list(self.ids)


@pytest.fixture
def sleeps(monkeypatch):
    count = [0]

    def fake_sleep(seconds):
        count[0] += 1

    monkeypatch.setattr(base.time, "sleep", fake_sleep)
    return count


def test_a_lost_node_is_not_waited_for_in_later_rounds(sleeps):
    grid = _Nodes([1, 2, 3])
    assert base.wait_for_nodes(grid, 3, timeout=600) == [1, 2, 3] and sleeps[0] == 0
    grid.ids = [1, 3]  # node 2 lost
    assert base.wait_for_nodes(grid, 3, timeout=600) == [1, 3] and sleeps[0] == 0
    assert base.wait_for_nodes(grid, 3, timeout=600) == [1, 3] and sleeps[0] == 0
    grid.ids = [1, 2, 3]  # it came back: used again
    assert base.wait_for_nodes(grid, 3, timeout=600) == [1, 2, 3]


def test_after_one_wait_ran_out_later_rounds_do_not_wait(sleeps):
    grid = _Nodes([1, 2])
    assert base.wait_for_nodes(grid, 3, timeout=0.05) == [1, 2]
    waited = sleeps[0]
    assert waited > 0  # the first call did wait
    for _ in range(5):
        assert base.wait_for_nodes(grid, 3, timeout=600) == [1, 2]
    grid.ids = [1, 2, 4]  # a late node is used from the round it appears
    assert base.wait_for_nodes(grid, 3, timeout=600) == [1, 2, 4]
    assert sleeps[0] == waited


def test_a_never_seen_node_is_still_waited_for_within_the_timeout(sleeps):
    grid = _Nodes([1, 2])
    grid_calls = iter([[1, 2], [1, 2], [1, 2, 3]])
    grid.get_node_ids = lambda: next(grid_calls, [1, 2, 3])
    assert base.wait_for_nodes(grid, 3, timeout=600) == [1, 2, 3] and sleeps[0] == 2


# ------------------------------------------------------------------------------------------
# C. Fewer (or more) nodes than num_clients
# ------------------------------------------------------------------------------------------

FEWER = ("2 SuperNodes connected but num_clients=3: start 1 more SuperNode (partition-id 2) "
         "or set num_clients=2 (flwr run: --federation-config num-supernodes=3)")


def test_fewer_nodes_than_num_clients_is_refused_at_once_in_one_line(tmp_path, caplog):
    with caplog.at_level(logging.ERROR, logger="flower_qlearn"):
        with pytest.raises(fq_config.ConfigError) as info:
            _run(client_app, tmp_path, ["num_rounds=3"], num_supernodes=2)
    assert str(info.value) == FEWER
    assert f"flower-qlearn: {FEWER}" in caplog.messages
    assert not (tmp_path / "out").exists()


def test_fewer_nodes_with_on_missing_nodes_proceed_runs_with_them(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        result = _run(client_app, tmp_path, ["num_rounds=3", "on_missing_nodes=proceed"],
                      num_supernodes=2)
    assert [(r["accepted"], r["rejected"]) for r in result.history] == [(2, 0)] * 3
    assert sum(FEWER in m for m in caplog.messages) == 1  # said once, at the start


def test_more_nodes_than_num_clients_is_refused(tmp_path):
    with pytest.raises(fq_config.ConfigError) as info:
        _run(client_app, tmp_path, ["num_rounds=3", "on_missing_nodes=proceed"],
             num_supernodes=4)
    assert str(info.value) == (
        "4 SuperNodes connected but num_clients=3: stop 1 SuperNode or set num_clients=4 "
        "(flwr run: --federation-config num-supernodes=3)"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [("node_wait=-1", "node_wait=-1 is out of range; expected a number >= 0"),
     ("on_missing_nodes=skip", "on_missing_nodes='skip' is out of range; expected one of fail")],
)
def test_node_keys_are_validated(override, message):
    with pytest.raises(fq_config.ConfigError, match=message.replace("(", r"\(")):
        fq_config.compose([override])


@pytest.mark.slow
def test_flwr_run_with_fewer_supernodes_fails_at_once_with_the_one_line(tmp_path):
    from flower_qlearn.federation import LocalFederation

    out = tmp_path / "out"
    with LocalFederation(tmp_path / "fed", simulation=True, auth=False) as fed:
        with pytest.raises(RuntimeError) as info:
            fed.run(COMMON + ["num_rounds=50", "node_wait=5"], out, num_supernodes=2,
                    timeout=300)
    text = str(info.value)
    assert "ended finished:failed" in text
    assert FEWER in text
    assert not out.exists()
    shutil.rmtree(tmp_path / "fed", ignore_errors=True)
