"""A throwaway one-node Slurm cluster (Debian's Slurm 22.05 and munge) in a temp directory.

Used by ``tests/test_slurm.py``'s session fixture; it can also be run by hand
(``python tests/slurm_cluster.py``) to get a cluster for experiments. Everything lives in
one folder: munge's key, socket and logs, ``slurm.conf``, state, spool and logs. The
daemons listen on free loopback ports, so a cluster of the machine (if any) is left alone.
Commands reach the cluster through ``SLURM_CONF``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo", "scancel")
SBIN = ("/usr/sbin", "/usr/bin", "/sbin")


def missing() -> str | None:
    """Why a cluster cannot be built here, or None."""
    if os.geteuid() != 0:
        return "the Slurm test cluster needs root (SlurmUser=root, munged as the munge user)"
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN])
    absent = [b for b in BINARIES if shutil.which(b, path=path) is None]
    if absent:
        return (f"Slurm/munge binaries not found ({', '.join(absent)}): "
                "apt-get install slurmctld slurmd slurm-client munge")
    return None


def _which(name: str) -> str:
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), *SBIN])) or name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    root: Path
    conf: Path
    host: str
    cpus: int
    procs: list[subprocess.Popen] = field(default_factory=list)
    munge_pid: Path | None = None

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([_which(cmd[0]), *cmd[1:]], capture_output=True, text=True, check=check,
                              env={**os.environ, **self.env}, timeout=60)

    def squeue(self) -> list[str]:
        """Every job of the cluster still known to squeue, as ``jobid state name`` lines."""
        out = self.run("squeue", "-h", "-o", "%i %T %j").stdout
        return [line for line in out.splitlines() if line.strip()]

    def wait_idle(self, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while self.squeue():
            if time.time() > deadline:
                raise TimeoutError(f"jobs still queued after {timeout} s: {self.squeue()}")
            time.sleep(0.5)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.munge_pid and self.munge_pid.exists():
            try:
                os.kill(int(self.munge_pid.read_text().strip()), 15)
            except (ValueError, ProcessLookupError):
                pass
        shutil.rmtree(self.root, ignore_errors=True)


def start(timeout: float = 60) -> Cluster:
    """Build and start the cluster; returns once ``sinfo`` shows the node idle."""
    root = Path(tempfile.mkdtemp(prefix="orch-slurm-"))
    root.chmod(0o755)
    host = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    mem_mb = max(1024, int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20) - 1024)

    # munge: a fresh key, its own socket; munged refuses to run as root
    munge = root / "munge"
    munge.mkdir(mode=0o700)
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    shutil.chown(munge, "munge", "munge")
    shutil.chown(key, "munge", "munge")
    sock = munge / "munge.socket"
    cluster = Cluster(root=root, conf=root / "slurm.conf", host=host, cpus=cpus, munge_pid=munge / "munged.pid")
    try:
        subprocess.run(["runuser", "-u", "munge", "--", _which("munged"), f"--key-file={key}", f"--socket={sock}",
                        f"--pid-file={munge / 'munged.pid'}", f"--log-file={munge / 'munged.log'}",
                        f"--seed-file={munge / 'munged.seed'}", "--force"], check=True, capture_output=True)
        munge.chmod(0o755)  # slurm (root) and clients reach the socket

        for sub in ("state", "spool", "log"):
            (root / sub).mkdir()
        cluster.conf.write_text("\n".join([
            "ClusterName=orchtest",
            f"SlurmctldHost={host}",
            "SlurmUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={sock}",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/backfill",
            "ReturnToService=2",
            "JobRequeue=1",
            "KillWait=30",
            "MinJobAge=5",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            f"StateSaveLocation={root / 'state'}",
            f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldPidFile={root / 'slurmctld.pid'}",
            f"SlurmdPidFile={root / 'slurmd.pid'}",
            f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
            f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN",
            f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))
        env = {**os.environ, "SLURM_CONF": str(cluster.conf)}
        for daemon in ("slurmctld", "slurmd"):
            log = open(root / "log" / f"{daemon}.out", "w")
            cluster.procs.append(subprocess.Popen([_which(daemon), "-D", "-f", str(cluster.conf)], env=env,
                                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = subprocess.run([_which("sinfo"), "-h", "-o", "%t"], capture_output=True, text=True, env=env)
            if out.returncode == 0 and out.stdout.strip() == "idle":
                return cluster
            if any(p.poll() is not None for p in cluster.procs):
                break
            time.sleep(0.5)
        logs = "".join((root / "log" / f).read_text()[-2000:] for f in ("slurmctld.out", "slurmd.out")
                       if (root / "log" / f).exists())
        raise RuntimeError(f"the Slurm test cluster did not come up:\n{logs}")
    except BaseException:
        cluster.stop()
        raise


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill PID` stops the cluster too
    c = start()
    print(f"export SLURM_CONF={c.conf}   # slurmctld/slurmd pids {[p.pid for p in c.procs]}; Ctrl-C or kill stops it")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        c.stop()
