"""Figures for the reconciler under load (issue 9, acceptance 10): on a fresh local control plane with
`spo reconciler` running as `spo up` runs it, create N SeccompProfiles and 2N pods using them (pod-level,
container and init-container contexts; no node, so they stay Pending), then print the time until every
profile has its status and the right activeWorkloads and finalizer (from the first create, and from
the last, since creating the objects takes much of the time on a small machine), the reconciler's RSS
(now and peak) and its CPU time per watch event it received.

    .venv/bin/python bench/reconciler_bench.py [--profiles 1000] [--pods-per-profile 2] [--threads 8]

Watch events are counted by watching the same kinds from this process, so the count is what the
reconciler's profile and pod caches were sent. The same watch tells when the last profile turns
right, which a list from the apiserver then confirms.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client

import manifests.crds
from api import constants, kinds
from api.kube import ResourceCache, api_client
from api.types import KubernetesObject, SeccompProfile
from spo import localcluster
from spo.bringup import start_reconciler

SP = kinds.SECCOMP_PROFILE
_CONTEXTS = ("pod", "container", "init")


def _proc(pid: int) -> tuple[float, float, float]:
    """(CPU seconds, RSS MiB, peak RSS MiB) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    memory = {
        line.split(":")[0]: int(line.split()[1]) / 1024
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith(("VmRSS:", "VmHWM:"))
    }
    return cpu, memory["VmRSS"], memory["VmHWM"]


def _pod(name: str, profile: str, context: str) -> dict[str, Any]:
    seccomp = {"seccompProfile": {"type": "Localhost", "localhostProfile": f"operator/{profile}.json"}}
    container: dict[str, Any] = {"name": "c", "image": "nginx"}
    spec: dict[str, Any] = {"containers": [container]}
    if context == "pod":
        spec["securityContext"] = seccomp
    elif context == "container":
        container["securityContext"] = seccomp
    else:
        spec["initContainers"] = [{"name": "init", "image": "nginx", "securityContext": seccomp}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def _read(response: Any) -> bytes:
    """The answer of a call made with `_preload_content=False`, left undecoded (decoding would take
    CPU the apiserver and the reconciler share); reading it to the end gives the connection back to
    the pool, which otherwise opens a new one for the next call."""
    return bytes(response.data)


def _in_parallel(threads: int, work: Iterable[Callable[[], object]]) -> None:
    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(job) for job in work]:
            future.result()


def _is_right(profile: SeccompProfile, wanted: list[str] | None) -> bool:
    """The profile has a status, the expected activeWorkloads and the in-use finalizer."""
    status = profile.status
    return bool(
        wanted is not None
        and status is not None
        and status.status
        and status.active_workloads == wanted
        and constants.FINALIZER_IN_USE in (profile.metadata.finalizers or [])
    )


def _right_in(profiles: Iterable[SeccompProfile], expected: dict[str, list[str]]) -> int:
    return sum(_is_right(p, expected.get(p.metadata.name or "")) for p in profiles)


def _right_stored(api: client.ApiClient, expected: dict[str, list[str]]) -> int:
    """As _right_in, from a list of what the apiserver stores now."""
    listing: Any = client.CustomObjectsApi(api).list_cluster_custom_object(
        SP.group, SP.version, SP.plural, _preload_content=False
    )
    items = json.loads(listing.data)["items"]
    return _right_in((SeccompProfile.model_validate(i) for i in items), expected)


def main() -> None:  # noqa: PLR0915 - one measurement, read top to bottom
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profiles", type=int, default=1000)
    parser.add_argument("--pods-per-profile", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8, help="parallel API clients creating objects")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()

    cluster = localcluster.ControlPlane(
        Path(tempfile.mkdtemp(prefix="spo-reconciler-bench-")), localcluster.binaries_dir()
    )
    cluster.start()
    try:
        api = api_client(str(cluster.kubeconfig))
        localcluster.install_crds(api, manifests.crds.all_crds())
        localcluster.ensure_namespace(api, constants.DEFAULT_NAMESPACE)
        localcluster.ensure_namespace(api, "bench")
        reconciler = start_reconciler(cluster, constants.DEFAULT_NAMESPACE, "https://127.0.0.1:1")
        names = [f"bench-{i:05d}" for i in range(args.profiles)]
        expected = {name: sorted(f"bench/{name}-{j}" for j in range(args.pods_per_profile)) for name in names}
        events = {"n": 0}
        right: set[str] = set()
        converged_at: list[float] = []
        converged = threading.Event()
        lock = threading.Lock()

        def count(_: object) -> None:
            with lock:
                events["n"] += 1

        def follow(profile: SeccompProfile) -> None:
            # Kept per event, so the moment the last profile turns right is known without polling
            # the apiserver, which would load the machine the reconciler is measured on.
            name = profile.metadata.name or ""
            with lock:
                if _is_right(profile, expected.get(name)):
                    right.add(name)
                else:
                    right.discard(name)
                if len(right) == len(expected) and not converged.is_set():
                    converged_at.append(time.monotonic())
                    converged.set()

        profiles_seen = ResourceCache(api, SP, SeccompProfile)
        profiles_seen.add_event_handler(follow)
        counters: list[ResourceCache[Any]] = [
            profiles_seen,
            ResourceCache(api, kinds.POD, KubernetesObject, "bench"),
        ]
        for cache in counters:
            cache.add_event_handler(count)
            cache.start()
            cache.wait_synced(30)
        events["n"] = 0
        cpu_before, rss_before, _ = _proc(reconciler.pid)
        # What else ran on the machine's cores meanwhile: the share the reconciler could have.
        neighbours = {
            name: process.pid for name, process in cluster.processes.items() if name != "reconciler"
        }
        neighbours_before = {name: _proc(pid)[0] for name, pid in neighbours.items()}
        own_before = time.process_time()
        print(f"reconciler idle: RSS {rss_before:.0f} MiB, CPU so far {cpu_before:.2f} s")

        objects = client.CustomObjectsApi(api)
        core = client.CoreV1Api(api)

        def create_profile(name: str) -> Callable[[], object]:
            body = {
                "apiVersion": SP.api_version,
                "kind": SP.kind,
                "metadata": {"name": name},
                "spec": {"defaultAction": "SCMP_ACT_ERRNO"},
            }
            return lambda: _read(
                objects.create_cluster_custom_object(
                    SP.group, SP.version, SP.plural, body, _preload_content=False
                )
            )

        def create_pod(name: str, j: int) -> Callable[[], object]:
            pod = _pod(f"{name}-{j}", name, _CONTEXTS[(j + len(name)) % len(_CONTEXTS)])
            return lambda: _read(core.create_namespaced_pod("bench", pod, _preload_content=False))  # type: ignore[arg-type]

        started = time.monotonic()

        _in_parallel(args.threads, [create_profile(n) for n in names])
        _in_parallel(args.threads, [create_pod(n, j) for n in names for j in range(args.pods_per_profile)])
        created = time.monotonic() - started
        print(
            f"created {args.profiles} profiles and {len(names) * args.pods_per_profile} pods "
            f"in {created:.1f} s"
        )

        stored = 0
        deadline = started + args.timeout
        while converged.wait(max(deadline - time.monotonic(), 0)):
            # What the watch told, checked against what is stored.
            stored = _right_stored(api, expected)
            if stored == args.profiles:
                break
            with lock:
                converged.clear()
                converged_at.clear()
        elapsed = (converged_at[0] if stored == args.profiles else time.monotonic()) - started
        cpu_after, rss_after, peak = _proc(reconciler.pid)
        neighbours_cpu = {name: _proc(pid)[0] - neighbours_before[name] for name, pid in neighbours.items()}
        own_cpu = time.process_time() - own_before
        with lock:
            seen = events["n"]
        for cache in counters:
            cache.stop()
        if stored != args.profiles:
            print(f"NOT CONVERGED: {len(right)}/{args.profiles} profiles right after {elapsed:.0f} s")
        else:
            print(
                f"every status, activeWorkloads and finalizer right: {elapsed:.1f} s after the first create, "
                f"{elapsed - created:.1f} s after the last"
            )
        cpu = cpu_after - cpu_before
        print(f"reconciler RSS: {rss_after:.0f} MiB now, {peak:.0f} MiB peak")
        per_event = cpu / max(seen, 1) * 1000
        print(
            f"reconciler CPU: {cpu:.1f} s for {seen} watch events (profiles, pods): {per_event:.2f} ms each"
        )
        others = ", ".join(f"{name} {cpu:.1f} s" for name, cpu in neighbours_cpu.items())
        print(f"CPU of the others meanwhile: {others}, this bench {own_cpu:.1f} s")
    finally:
        cluster.destroy()


if __name__ == "__main__":
    main()
