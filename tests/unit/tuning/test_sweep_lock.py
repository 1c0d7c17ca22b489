"""The driver lock is atomic, never stale on one machine, and ``--force`` takes over
from a dead driver recorded on another host (issue 15, defect 11). No Ray started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from core.errors import InputError
from tuning.experiment.layout import read_json, write_json
from tuning.sweep.lock import claim_driver, release_driver

RACE = """
import sys, time
from core.errors import InputError
from tuning.sweep.lock import claim_driver
exp, start = sys.argv[1], float(sys.argv[2])
while time.time() < start:
    pass
try:
    claim_driver(exp)
except InputError:
    print("refused", flush=True)
    sys.exit(0)
print("claimed", flush=True)
time.sleep(3)
"""


def _exp(tmp_path):
    (tmp_path / "exp" / "seltune").mkdir(parents=True)
    return tmp_path / "exp"


def test_two_drivers_at_the_same_instant_one_wins(tmp_path):
    exp = _exp(tmp_path)
    start = time.time() + 2.0
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(exp), str(start)],
                              stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
             for _ in range(6)]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sorted(outs) == ["claimed"] + ["refused"] * 5


def test_a_killed_driver_leaves_no_stale_lock(tmp_path):
    exp = _exp(tmp_path)
    p = subprocess.Popen([sys.executable, "-c", RACE, str(exp), "0"], stdout=subprocess.PIPE,
                         text=True, cwd=os.getcwd())
    assert p.stdout is not None and p.stdout.readline().strip() == "claimed"
    with pytest.raises(InputError, match=rf"a driver \(pid {p.pid}\) is still running"):
        claim_driver(exp)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    claim_driver(exp)  # its driver.json says pid alive-or-not: the lock says dead
    assert read_json(exp / "seltune" / "driver.json")["pid"] == os.getpid()
    release_driver(exp)
    assert not (exp / "seltune" / "driver.json").exists()


def test_a_driver_on_another_host_needs_force(tmp_path):
    exp = _exp(tmp_path)
    write_json(exp / "seltune" / "driver.json", {"pid": 123, "host": "elsewhere"})
    with pytest.raises(InputError, match=r"host elsewhere .*seltune resume --force"):
        claim_driver(exp)
    assert read_json(exp / "seltune" / "driver.json")["host"] == "elsewhere"
    claim_driver(exp, force=True)
    assert read_json(exp / "seltune" / "driver.json")["host"] == os.uname().nodename
    release_driver(exp)


HOLD = "import sys, time\nf = open(sys.argv[1], 'w')\nprint('up', flush=True)\ntime.sleep(60)\n"


def _holder(path):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "up"
    return p


def test_leftovers_of_a_dead_driver_are_stopped_by_pid_and_start_time(tmp_path):
    # what a SIGKILLed driver's local Ray leaves: its agents (issue 15, defect 11)
    from tuning.sweep.lock import _start_time, stop_leftovers

    session = tmp_path / "session_2026-01-01_00-00-00_1"
    (session / "logs").mkdir(parents=True)
    agent = _holder(session / "logs" / "agent.log")  # started after the record
    recorded = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    temp = tmp_path / "seltune-ray-abc"
    temp.mkdir()
    try:
        start = _start_time(recorded.pid)
        info = {"ray_processes": [[recorded.pid, start], [bystander.pid, "0"]],
                "ray_session_dir": str(session), "ray_temp_dir": str(temp)}
        assert stop_leftovers(info) == 2
        assert agent.wait(timeout=10) == -signal.SIGKILL
        assert recorded.wait(timeout=10) == -signal.SIGKILL
        assert bystander.poll() is None  # its pid was recorded with another start time
        assert not temp.exists()
    finally:
        for p in (agent, recorded, bystander):
            p.kill()
            p.wait()
