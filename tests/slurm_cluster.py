"""A throw-away single-node Slurm cluster for tests (and for trying the Slurm profile on a laptop).

``SlurmCluster`` (a context manager) installs Debian's ``slurmctld slurmd slurm-client munge``
with apt when they are missing, writes ``slurm.conf`` and ``gres.conf`` (one fake GPU per
``File=``; ``/dev/null`` for the first) into a fresh temporary directory, starts its *own*
``munged`` (private socket), ``slurmctld`` and ``slurmd`` on free ports, and waits until
``sinfo`` reports the node idle. Nothing under /etc or /run is written and no accounting
database is used, so several clusters can run side by side on one machine and an existing
Slurm installation is left alone. Client commands find the cluster through ``SLURM_CONF``
and through wrappers in ``<dir>/bin`` that pin it (the Snakemake jobstep plugin strips
SLURM_* variables before its nested ``srun``): run subprocesses with ``cluster.env`` (a copy
of ``os.environ`` with SLURM_CONF set and that bin/ first on PATH).

On exit it cancels its jobs, stops exactly the daemons it started (by PID: SIGTERM, then
SIGKILL after a timeout) and removes the directory. Every wait has a timeout; a failure
raises ``SlurmClusterError`` with the tail of every daemon log.

``slurm_cluster`` is a module-scoped pytest fixture around it: it skips when the machine
cannot run Slurm (not root, no apt and no Slurm) and fails instead of skipping when ``CI``
is true. The recipe it follows is written out as shell commands in docs/slurm.md.

Limits (chosen for Debian 12's Slurm 22.05 without systemd or cgroups): ``proctrack/linuxproc``
and ``task/none`` (no CPU, memory or device confinement), ``accounting_storage/none`` (so
``sacct`` finds nothing: use ``--slurm-status-command squeue`` with the Snakemake plugin).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
# Binaries that must all exist for the packages to count as installed.
BINARIES = ("slurmctld", "slurmd", "sinfo", "sbatch", "squeue", "scontrol", "scancel", "srun", "munged")
# Client commands that get a SLURM_CONF-pinning wrapper (see _write_client_wrappers).
CLIENTS = ("srun", "sbatch", "salloc", "squeue", "scontrol", "scancel", "sinfo", "sacct", "sstat", "sattach")
MUNGE_KEY = Path("/etc/munge/munge.key")


class SlurmClusterError(RuntimeError):
    """The cluster could not be installed, started or stopped."""


class SlurmUnavailable(SlurmClusterError):
    """This machine cannot run the cluster at all (not root, no apt): a reason to skip."""


def _which(name: str) -> str | None:
    """The real binary: never another test cluster's wrapper (bin/ under an anogen-slurm- dir)."""
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and "/anogen-slurm-" not in d]
    return shutil.which(name, path=os.pathsep.join([*dirs, "/usr/sbin", "/sbin", "/usr/bin", "/bin"]))


def _missing_binaries() -> list[str]:
    return [b for b in BINARIES if _which(b) is None]


def _run(
    cmd: Sequence[str], timeout: float, env: dict | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(
            list(cmd), env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise SlurmClusterError(f"{' '.join(cmd)} timed out after {timeout:.0f} s") from exc
    if check and result.returncode != 0:
        raise SlurmClusterError(
            f"{' '.join(cmd)} failed with exit code {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


def install_packages(timeout: float = 600) -> None:
    """apt-get install the Slurm and munge packages when any binary is missing (root only)."""
    if not _missing_binaries():
        return
    if os.geteuid() != 0:
        raise SlurmUnavailable(f"Slurm is not installed ({', '.join(_missing_binaries())} missing) and we are not root")
    apt = _which("apt-get")
    if apt is None:
        raise SlurmUnavailable("Slurm is not installed and apt-get is not available to install it")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = [apt, "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    result = _run(install, timeout, env=env, check=False)
    if result.returncode != 0:
        # Usually an empty or stale package list: update once, then try again.
        _run([apt, "update", "-q"], timeout, env=env)
        _run(install, timeout, env=env)
    if _missing_binaries():
        raise SlurmClusterError(f"installed {' '.join(PACKAGES)} but still missing: {', '.join(_missing_binaries())}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mem_total_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 4096  # pragma: no cover - /proc/meminfo always has MemTotal on Linux


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"({exc})"
    return "\n".join(text[-lines:]) or "(empty)"


@dataclass
class _Daemon:
    name: str
    process: subprocess.Popen
    log: Path


@dataclass
class SlurmCluster:
    """One node, ``partitions`` on it (the first is the default), ``gpus`` fake GPUs.

    ``gpu_type`` gives the GPUs a type, so that ``--gpus=<type>:1`` (the plugin's
    ``gpu_model``) is accepted.

    ``cpus`` / ``memory_mb`` are what the node *declares*; by default the machine's real
    core count and MemTotal minus a 10 % margin. Declaring more than the hardware has
    (e.g. to accept a profile written for 8-CPU GPU jobs on a 2-core laptop) is allowed:
    ``SlurmdParameters=config_overrides`` makes slurmd trust the declared values. With
    ``task/none`` nothing is enforced, so jobs simply share the real cores.
    """

    partitions: Sequence[str] = ("debug",)
    cpus: int | None = None
    memory_mb: int | None = None
    gpus: int = 1
    gpu_type: str | None = None
    min_job_age: int = 300
    start_timeout: float = 90.0
    install_timeout: float = 600.0
    keep_dir: bool = False
    extra_conf: str = ""

    root: Path = field(init=False, default=None)  # type: ignore[assignment]
    env: dict = field(init=False, default_factory=dict)
    node: str = field(init=False, default="")
    _daemons: list = field(init=False, default_factory=list)

    # ------------------------------------------------------------------ public API
    @property
    def partition(self) -> str:
        """The default partition's name."""
        return self.partitions[0]

    @property
    def conf_path(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    def __enter__(self) -> SlurmCluster:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if os.geteuid() != 0:
            raise SlurmUnavailable("starting munged, slurmctld and slurmd needs root")
        install_packages(self.install_timeout)
        if not MUNGE_KEY.exists():
            raise SlurmClusterError(f"{MUNGE_KEY} is missing (the munge package creates it)")
        # mkdtemp is 0700: open it up so the munge user can reach its socket directory.
        self.root = Path(tempfile.mkdtemp(prefix="anogen-slurm-"))
        self.root.chmod(0o755)
        try:
            self._write_config()
            self._start_munged()
            self._start_slurmctld()
            self._start_slurmd()
            self._wait_idle()
        except BaseException:
            report = self.log_tail()
            self.stop()
            if report:
                print(report)
            raise

    def stop(self) -> None:
        """Cancel our jobs, stop our daemons by PID (reverse start order), remove the directory."""
        if self._daemons and any(d.name == "slurmctld" and d.process.poll() is None for d in self._daemons):
            self._cancel_jobs()
        for daemon in reversed(self._daemons):
            self._terminate(daemon)
        self._daemons.clear()
        if self.root is not None and not self.keep_dir:
            shutil.rmtree(self.root, ignore_errors=True)

    def run(self, *cmd: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        """Run a Slurm client command against this cluster."""
        return _run(cmd, timeout, env=self.env, check=check)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of every daemon log (for failure messages)."""
        if self.root is None:
            return ""
        parts = []
        for log in [*sorted((self.root / "log").glob("*.log")), self.root / "munge" / "munged.log"]:
            if not log.exists():
                continue
            parts.append(f"----- {log.name} (last {lines} lines) -----\n{_tail(log, lines)}")
        return "\n".join(parts)

    # ------------------------------------------------------------------ configuration
    def _write_config(self) -> None:
        for sub in ("etc", "log", "state", "spool", "run", "munge"):
            (self.root / sub).mkdir()
        self.node = socket.gethostname().split(".")[0]
        cpus = self.cpus or os.cpu_count() or 1
        memory = self.memory_mb or max(512, int(_mem_total_mb() * 0.9))
        self.ctld_port = _free_port()
        self.slurmd_port = _free_port()
        while self.slurmd_port == self.ctld_port:
            self.slurmd_port = _free_port()
        munge_socket = self.root / "munge" / "munge.socket"
        typed = f"{self.gpu_type}:" if self.gpu_type else ""
        gres_node = f" Gres=gpu:{typed}{self.gpus}" if self.gpus else ""
        partitions = "\n".join(
            f"PartitionName={name} Nodes={self.node} Default={'YES' if i == 0 else 'NO'} "
            "MaxTime=INFINITE State=UP OverSubscribe=NO"
            for i, name in enumerate(self.partitions)
        )
        conf = f"""\
# Written by tests/slurm_cluster.py: a single-node test cluster, no accounting database.
ClusterName=anogentest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={self.root / "state"}
SlurmdSpoolDir={self.root / "spool"}
SlurmctldPidFile={self.root / "run" / "slurmctld.pid"}
SlurmdPidFile={self.root / "run" / "slurmd.pid"}
SlurmctldLogFile={self.root / "log" / "slurmctld.log"}
SlurmdLogFile={self.root / "log" / "slurmd.log"}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SwitchType=switch/none
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
ReturnToService=2
MinJobAge={self.min_job_age}
KillWait=5
InactiveLimit=0
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory}{gres_node} State=UNKNOWN
{partitions}
{self.extra_conf}
"""
        self.conf_path.write_text(conf)
        # One device file per fake GPU; slurmd only stat()s them (no cgroups here).
        fakes = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"]
        if self.gpus > len(fakes):
            raise SlurmClusterError(f"at most {len(fakes)} fake GPUs are supported, asked for {self.gpus}")
        type_field = f" Type={self.gpu_type}" if self.gpu_type else ""
        gres = "".join(f"NodeName={self.node} Name=gpu{type_field} File={f}\n" for f in fakes[: self.gpus])
        (self.root / "etc" / "gres.conf").write_text(gres)
        # An empty plugstack.conf keeps /etc/slurm's (and any SPANK plugins there) out of our jobs.
        (self.root / "etc" / "plugstack.conf").write_text("")
        self.conf_path.parent.chmod(0o755)
        self.env = dict(os.environ, SLURM_CONF=str(self.conf_path))
        self.env["PATH"] = f"{self._write_client_wrappers()}:{self.env.get('PATH', '')}"
        # A Slurm job context inherited from an outer allocation would confuse the clients.
        for key in [k for k in self.env if k.startswith("SLURM_") and k != "SLURM_CONF"]:
            del self.env[key]

    def _write_client_wrappers(self) -> Path:
        """bin/ with srun, sbatch, ... that pin SLURM_CONF to this cluster.

        snakemake-executor-plugin-slurm-jobstep strips every SLURM_* variable except the
        job's identity before its nested ``srun``, so SLURM_CONF alone would not reach it
        and srun would look for /etc/slurm/slurm.conf. The wrappers keep the cluster
        self-contained without writing there; put ``bin/`` first on PATH (``self.env`` does).
        """
        bin_dir = self.root / "bin"
        bin_dir.mkdir()
        for name in CLIENTS:
            real = _which(name)
            if real is None:
                continue
            wrapper = bin_dir / name
            wrapper.write_text(f'#!/bin/sh\nSLURM_CONF={self.conf_path} exec {real} "$@"\n')
            wrapper.chmod(0o755)
        return bin_dir

    # ------------------------------------------------------------------ daemons
    def _spawn(self, name: str, cmd: list[str], user: str | None = None) -> _Daemon:
        log = self.root / "log" / f"{name}.out.log"
        # The daemon is our direct child (no runuser/su wrapper), so its PID is the one we stop.
        as_user = {"user": user, "group": user, "extra_groups": []} if user else {}
        with open(log, "wb") as out:
            # Its own session: a Ctrl-C in the terminal does not reach the daemons first.
            process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                **as_user,
            )
        daemon = _Daemon(name, process, log)
        self._daemons.append(daemon)
        return daemon

    def _wait(self, what: str, ready, timeout: float, daemon: _Daemon | None = None, poll: float = 0.25):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if daemon is not None and daemon.process.poll() is not None:
                raise SlurmClusterError(
                    f"{daemon.name} exited with code {daemon.process.returncode} while waiting for {what}\n"
                    + self.log_tail()
                )
            try:
                last = ready()
            except SlurmClusterError as exc:
                last = exc
            else:
                if last is True:
                    return
            time.sleep(poll)
        raise SlurmClusterError(
            f"timed out after {timeout:.0f} s waiting for {what} (last: {last})\n" + self.log_tail()
        )

    def _start_munged(self) -> None:
        munge_dir = self.root / "munge"
        shutil.chown(munge_dir, "munge", "munge")
        munge_dir.chmod(0o755)
        munged = _which("munged")
        daemon = self._spawn(
            "munged",
            [
                munged,
                "--foreground",
                "--force",
                f"--socket={munge_dir / 'munge.socket'}",
                f"--pid-file={munge_dir / 'munged.pid'}",
                f"--seed-file={munge_dir / 'munged.seed'}",
                f"--log-file={munge_dir / 'munged.log'}",
                f"--key-file={MUNGE_KEY}",
            ],
            user="munge",
        )
        socket_path = munge_dir / "munge.socket"
        self._wait("munged's socket", lambda: socket_path.exists(), 20, daemon)
        munge, unmunge = _which("munge"), _which("unmunge")
        if munge and unmunge:

            def roundtrip():
                cred = _run([munge, "-n", "-S", str(socket_path)], 10, check=False)
                if cred.returncode != 0:
                    return cred.stderr.strip()
                check = subprocess.run(
                    [unmunge, "-S", str(socket_path)], input=cred.stdout, capture_output=True, text=True, timeout=10
                )
                return True if check.returncode == 0 else check.stderr.strip()

            self._wait("a munge credential round trip", roundtrip, 20, daemon)

    def _start_slurmctld(self) -> None:
        daemon = self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf_path)])

        def answers():
            result = self.run("scontrol", "ping", timeout=10, check=False)
            return True if "is UP" in result.stdout else (result.stdout + result.stderr).strip()

        self._wait("slurmctld to answer scontrol ping", answers, self.start_timeout, daemon, poll=0.5)

    def _start_slurmd(self) -> None:
        self._spawn("slurmd", [_which("slurmd"), "-D", "-N", self.node, "-f", str(self.conf_path)])

    def _wait_idle(self) -> None:
        slurmd = next(d for d in self._daemons if d.name == "slurmd")

        def idle():
            result = self.run("sinfo", "-h", "-N", "-o", "%T", timeout=10, check=False)
            states = set(result.stdout.split())
            return True if states and states <= {"idle"} else (result.stdout + result.stderr).strip()

        self._wait("the node to become idle in sinfo", idle, self.start_timeout, slurmd, poll=0.5)

    def _cancel_jobs(self, timeout: float = 30) -> None:
        try:
            self.run("scancel", "--full", f"--partition={','.join(self.partitions)}", timeout=15, check=False)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                result = self.run("squeue", "-h", "-o", "%i %T", timeout=10, check=False)
                if result.returncode != 0 or not result.stdout.strip():
                    return
                time.sleep(0.5)
        except SlurmClusterError:
            pass

    @staticmethod
    def _terminate(daemon: _Daemon, timeout: float = 15) -> None:
        process = daemon.process
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(timeout)


def skip_or_fail(reason: str):
    """pytest.skip outside CI; in CI (CI=true) a missing Slurm is a failure, not a skip."""
    import pytest

    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"Slurm test cannot run in CI: {reason}")
    pytest.skip(reason)


@contextlib.contextmanager
def pytest_cluster(**kwargs) -> Iterator[SlurmCluster]:
    """A started SlurmCluster for a test, skipping (or failing in CI) when it cannot run."""
    if os.geteuid() != 0:
        skip_or_fail("needs root to install and start Slurm")
    if _missing_binaries() and _which("apt-get") is None:
        skip_or_fail("Slurm is not installed and apt-get is unavailable")
    cluster = SlurmCluster(**kwargs)
    try:
        cluster.start()
    except SlurmUnavailable as exc:
        skip_or_fail(str(exc))
    try:
        yield cluster
    finally:
        cluster.stop()


try:
    import pytest as _pytest
except ImportError:  # pragma: no cover - the module is also usable without pytest
    _pytest = None

if _pytest is not None:

    @_pytest.fixture(scope="module")
    def slurm_cluster():
        """A single-node cluster with partition 'debug' and one fake GPU (see SlurmCluster)."""
        with pytest_cluster() as cluster:
            yield cluster
