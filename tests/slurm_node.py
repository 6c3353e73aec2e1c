"""A real single-node Slurm for tests: install it, start munged/slurmctld/slurmd, stop them by PID.

Two fake GPUs (character devices aliasing /dev/null) are declared as GRES so that rules asking
for `gpu=1` are scheduled exactly as on a GPU cluster; torch still finds no CUDA and uses the CPU.
Slurm reads its config from /etc/slurm (the executor's job steps drop SLURM_CONF), so this needs
root; everything else (state, logs, PIDs) lives in a temporary folder.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

ETC = Path("/etc/slurm")
FAKE_GPUS = [Path("/dev/fakegpu0"), Path("/dev/fakegpu1")]


def why_not_available() -> str | None:
    """None when a Slurm can be installed and started here, else the reason to skip."""
    if os.geteuid() != 0:
        return "needs root to install and configure Slurm (/etc/slurm)"
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        return "Slurm is not installed and apt-get is not available to install it"
    return None


def install() -> None:
    if shutil.which("slurmctld") and shutil.which("munged"):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "slurm-wlm"], check=True, env=env,
                   capture_output=True)


def _this_node() -> tuple[str, int, int]:
    """Host name, CPUs and memory (MB, less a fifth for the system) as slurmd sees them."""
    out = subprocess.run(["slurmd", "-C"], check=True, capture_output=True, text=True).stdout
    fields = dict(item.split("=", 1) for item in out.split() if "=" in item)
    return fields["NodeName"], int(fields["CPUs"]), int(fields["RealMemory"]) * 8 // 10


@dataclass
class SlurmNode:
    root: Path
    pids: list[int] = field(default_factory=list)

    def start(self) -> None:
        for sub in ("ctld", "d", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            subprocess.run(["mungekey", "--create"], check=True)
        shutil.chown(key, "munge", "munge")
        for gpu in FAKE_GPUS:
            if not gpu.exists():
                os.mknod(gpu, 0o666 | 0o020000, os.makedev(1, 3))
        host, cpus, memory = _this_node()
        ETC.mkdir(parents=True, exist_ok=True)
        (ETC / "slurm.conf").write_text("\n".join([
            "ClusterName=lesseg-test", f"SlurmctldHost={host}(127.0.0.1)",
            "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/munge",
            f"StateSaveLocation={self.root / 'ctld'}", f"SlurmdSpoolDir={self.root / 'd'}",
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}", f"SlurmdPidFile={self.root / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.root / 'log/slurmctld.log'}", f"SlurmdLogFile={self.root / 'log/slurmd.log'}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core_Memory",
            "AccountingStorageType=accounting_storage/none", "JobAcctGatherType=jobacct_gather/none",
            "MpiDefault=none", "ReturnToService=2", "GresTypes=gpu", "SchedulerParameters=sched_min_interval=0",
            f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} "
            f"Gres=gpu:{len(FAKE_GPUS)} State=UNKNOWN",
            f"PartitionName=main Nodes={host} Default=YES MaxTime=INFINITE State=UP", ""]))
        (ETC / "gres.conf").write_text(
            f"AutoDetect=off\nNodeName={host} Name=gpu File=/dev/fakegpu[0-{len(FAKE_GPUS) - 1}]\n")
        socket_dir = Path("/run/munge")
        socket_dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(socket_dir, "munge", "munge")
        # munged runs as user munge, which cannot enter pytest's private temporary folders
        munge_pid = socket_dir / "test-munged.pid"
        subprocess.run(["su", "-s", "/bin/sh", "munge", "-c",
                        f"/usr/sbin/munged --pid-file {munge_pid} --log-file {socket_dir / 'test-munged.log'}"
                        f" --seed-file {socket_dir / 'test-munged.seed'}"], check=True)
        self.pids.append(self._wait_pid(munge_pid))
        subprocess.run(["slurmctld", "-i"], check=True)
        self.pids.append(self._wait_pid(self.root / "slurmctld.pid"))
        subprocess.run(["slurmd"], check=True)
        self.pids.append(self._wait_pid(self.root / "slurmd.pid"))
        self._wait_idle()

    @staticmethod
    def _wait_pid(path: Path, timeout: float = 20) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists() and path.read_text().strip():
                return int(path.read_text().split()[0])
            time.sleep(0.2)
        raise RuntimeError(f"daemon did not write {path}")

    def _wait_idle(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout
            if state.strip() in ("idle", "mixed"):
                return
            time.sleep(0.5)
        log = (self.root / "log" / "slurmctld.log").read_text()[-2000:]
        raise RuntimeError(f"Slurm node did not become idle (state {state.strip()!r}):\n{log}")

    def stop(self) -> None:
        for pid in reversed(self.pids):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(50):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
        self.pids.clear()
