"""Audit-line figures (issue 11 acceptance 7): a replayed audit.log of 1M mixed lines (SECCOMP, AVC with
its SYSCALL and PROCTITLE records, noise) read through the agent's FileSource and taken through the audit
thread's own per-event path, agent.audit.attributed (parse_block, then pid -> container through a /proc
tree, container -> pod through the container index: a fake /proc of 256 processes in 16 containers, whose
pids the events come from), plus the syscall naming its dispatch does, on one core; then `ausearch -if`
on the same file, on the same core, as the reference; and this process's RSS before and after. Targets:
>= 100k lines/s, faster than ausearch, RSS flat (the caches are bounded).

    .venv/bin/python bench/audit_bench.py [--lines 1000000] [--cpu N] [--rounds 3]

Compare the CPU seconds (user + system, ours and ausearch's) rather than wall time on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

# The generator of the audit.log lines is the tests' (tests/auditlog_corpus.py): one format, one place.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.attribution import ContainerIds, ContainerIndex
from agent.audit import attributed
from agent.auditline import AvcEvent, SeccompEvent, Unparsable
from agent.auditsource import FileSource
from agent.syscalls import is_known, syscall_name
from tests.auditlog_corpus import audit_log_lines


def memory_mib() -> tuple[float, float]:
    """This process's RSS and peak RSS, MiB."""
    fields = dict(
        line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


PROCESSES, CONTAINERS, FIRST_PID = 256, 16, 1000
PIDS = range(FIRST_PID, FIRST_PID + PROCESSES)


def write_log(path: Path, count: int) -> int:
    written = 0
    with path.open("w") as handle:
        for line in audit_log_lines(count, pids=PIDS):
            handle.write(line + "\n")
            written += 1
    return written


class Timing(NamedTuple):
    wall: float
    cpu: float  # user + system seconds: what the work costs a core, whatever else the machine runs


def fake_node(root: Path) -> ContainerIndex:
    """A /proc of the PIDS processes spread over CONTAINERS containers, and the index of their pods."""
    index = ContainerIndex()
    ids = [f"{n:064x}" for n in range(1, CONTAINERS + 1)]
    for n, pid in enumerate(PIDS):
        directory = root / str(pid)
        directory.mkdir(parents=True)
        stat = f"{pid} (nginx) S 1 1 1 0 -1 4194560 1 0 0 0 1 1 0 0 20 0 1 0 {500 + n} 1 1"
        (directory / "stat").write_text(stat)
        (directory / "cgroup").write_text(
            f"0::/kubepods/pod-{n}/cri-containerd-{ids[n % CONTAINERS]}.scope\n"
        )
    for number, container_id in enumerate(ids):
        status = {"name": "c", "containerID": f"containerd://{container_id}"}
        pod = {
            "metadata": {"name": f"pod-{number}", "namespace": "bench"},
            "status": {"containerStatuses": [status]},
        }
        index.update(pod)
    return index


def parse_file(path: Path, proc: Path, index: ContainerIndex) -> tuple[Timing, dict[str, int]]:
    """How long following the file to its end takes, attributing each event to its pod as the audit
    thread does and naming the syscall of each SECCOMP event as its dispatch does; how many events of
    each kind it saw."""
    counts: dict[type, int] = dict.fromkeys([SeccompEvent, AvcEvent, Unparsable], 0)
    unnamed = unknown_pod = 0
    stop = threading.Event()
    source = FileSource(path, from_start=True, on_idle=stop.set)
    pids = ContainerIds(proc)
    wall, cpu = time.perf_counter(), time.process_time()
    for block in source.blocks(stop):
        for item in attributed(block, pids, index):
            if isinstance(item, Unparsable):
                counts[Unparsable] += 1
                continue
            event = item.event
            counts[type(event)] += 1
            if type(event) is SeccompEvent and not is_known(syscall_name(event.syscall, event.arch)):
                unnamed += 1
            unknown_pod += item.info is None
    timing = Timing(time.perf_counter() - wall, time.process_time() - cpu)
    pids.close()
    tally = {kind.__name__: count for kind, count in counts.items()}
    return timing, tally | {"unnamed syscalls": unnamed, "pod unknown": unknown_pod}


def run_ausearch(path: Path) -> Timing | None:
    """How long `ausearch -if` over the file takes, on this process's CPU (the child inherits it)."""
    ausearch = shutil.which("ausearch") or "/usr/sbin/ausearch"
    if not os.access(ausearch, os.X_OK):
        return None
    wall = time.perf_counter()
    child = subprocess.Popen(
        [ausearch, "-if", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _, _, usage = os.wait4(child.pid, 0)
    child.returncode = 0  # reaped by wait4 above
    return Timing(time.perf_counter() - wall, usage.ru_utime + usage.ru_stime)


def rates(total: int, timings: list[Timing]) -> str:
    cpu = min(t.cpu for t in timings)
    walls = sorted(t.wall for t in timings)
    return (
        f"CPU {cpu:6.2f} s = {total / cpu:>9,.0f} lines/s;  wall best {walls[0]:6.2f} s = "
        f"{total / walls[0]:>9,.0f} lines/s, median {walls[len(walls) // 2]:6.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--cpu", type=int, default=min(os.sched_getaffinity(0)))
    # The machine is shared: rounds alternate ours and ausearch so both see the same load.
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.cpu})
    ours: list[Timing] = []
    theirs: list[Timing] = []
    rss_after: list[float] = []
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as directory:
        path = Path(directory) / "audit.log"
        proc = Path(directory) / "proc"
        index = fake_node(proc)
        total = write_log(path, args.lines)
        size_mib = path.stat().st_size / 2**20
        print(
            f"replayed audit.log: {total:,} lines, {size_mib:.0f} MiB; CPU {args.cpu}, {args.rounds} rounds"
        )
        rss_before, _ = memory_mib()
        for _ in range(args.rounds):
            timing, kinds = parse_file(path, proc, index)
            ours.append(timing)
            rss_after.append(memory_mib()[0])
            reference = run_ausearch(path)
            if reference is not None:
                theirs.append(reference)
    print(f"ours    : {rates(total, ours)}  (FileSource.blocks + audit.attributed + syscall_name)")
    print(f"          attributed events: {kinds}")
    if theirs:
        print(f"ausearch: {rates(total, theirs)}  (ausearch -if, output discarded)")
        ratio = min(t.cpu for t in theirs) / min(t.cpu for t in ours)
        print(f"ours is {ratio:.1f}x as fast as ausearch (CPU seconds, best of each)")
    else:
        print("ausearch: not installed (apt auditd)")
    after = ", ".join(f"{rss:.0f}" for rss in rss_after)
    peak = memory_mib()[1]
    print(f"RSS before the rounds {rss_before:.0f} MiB, after each: {after} MiB (peak {peak:.0f} MiB)")


if __name__ == "__main__":
    main()
