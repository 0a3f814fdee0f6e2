"""Benchmark of the binding webhook over HTTPS against trivial endpoints on the same server.

Run: `.venv/bin/python bench/webhook_bench.py` (needs `wrk`; about three minutes; 127.0.0.1 only).

The server subprocess runs `webhooks.server.serve` on the real app over a StaticSnapshot holding 100
ProfileBindings in the namespace and 1,000 SeccompProfiles, plus two endpoints returning a fixed
response of the webhook's mean response size:
- `/ceiling`, a trivial FastAPI endpoint (`@app.post`, through FastAPI's middleware and router);
- `/floor`, served like the admission endpoints (dispatched ahead of FastAPI) and only reading the
  body, i.e. what TLS + HTTP + body transfer cost in this server before any admission work.

Figures: throughput at 32 connections (wrk), p50/p99 at 200 req/s paced on a fixed schedule with 10
keep-alive connections (latency from the scheduled send time, so a stall counts against every request
it delays), errors, and the server's RSS after 100k webhook requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
from starlette.requests import Request
from starlette.responses import Response

from api import constants
from api.types import ProfileBinding, SeccompProfile
from webhooks.snapshot import StaticSnapshot

HOST: Final = "127.0.0.1"
NAMESPACE: Final = "bench"
BINDINGS: Final = 100
PROFILES: Final = 1000
REVIEWS: Final = 300
BOUND_FRACTION: Final = 0.4
CEILING_PATH: Final = "/ceiling"
FLOOR_PATH: Final = "/floor"
SEED: Final = 20240601

THROUGHPUT_CONNECTIONS: Final = 32
THROUGHPUT_SECONDS: Final = 10
THROUGHPUT_ROUNDS: Final = 2
PACED_RATE: Final = 200
PACED_CONNECTIONS: Final = 10
PACED_SECONDS: Final = 20
PACED_WARMUP_SECONDS: Final = 2
RSS_AFTER_REQUESTS: Final = 100_000

TARGET_RATIO: Final = 0.7
TARGET_P99_FACTOR: Final = 1.5
TARGET_P99_SECONDS: Final = 0.025
TARGET_RSS_MIB: Final = 100

# The allow list every benchmark profile draws from, for a realistic memory footprint of 1,000 profiles.
_SYSCALL_TEXT: Final = """
accept4 access arch_prctl bind brk capget capset chdir chmod chown clone clone3 close connect dup
dup2 dup3 epoll_create1 epoll_ctl epoll_pwait epoll_wait execve exit exit_group faccessat2 fchdir
fchmod fchown fcntl fstat fstatfs futex getcwd getdents64 getegid geteuid getgid getpeername getpid
getppid getrandom getrlimit getsockname getsockopt gettid getuid ioctl listen lseek madvise mkdirat
mmap mprotect munmap nanosleep newfstatat openat pipe2 poll prctl pread64 prlimit64 read readlink
recvfrom recvmsg rename rt_sigaction rt_sigprocmask rt_sigreturn sched_getaffinity sched_yield
sendfile sendmsg sendto set_robust_list set_tid_address setgid setgroups setsockopt setuid socket
statfs statx sysinfo tgkill uname unlinkat wait4 write writev
"""
SYSCALLS: Final = tuple(_SYSCALL_TEXT.split())

# Replays request bodies round-robin; requests are formatted once per thread, not per call.
WRK_SCRIPT: Final = """
local dir, count = os.getenv("BENCH_BODIES"), tonumber(os.getenv("BENCH_COUNT"))
local requests, index = {}, 0
for i = 1, count do
  local file = assert(io.open(dir .. "/" .. i .. ".json", "rb"))
  requests[i] = wrk.format("POST", nil, {["Content-Type"] = "application/json"}, file:read("*a"))
  file:close()
end
request = function()
  index = index % count + 1
  return requests[index]
end
"""


# --- the data --------------------------------------------------------------------------------------


def bound_image(index: int) -> str:
    return f"registry.example.com/bench/service-{index}:v1.{index % 7}"


def benchmark_snapshot() -> StaticSnapshot:
    group = constants.GROUP
    profiles = [
        SeccompProfile.model_validate(
            {
                "apiVersion": f"{group}/v1beta1",
                "kind": "SeccompProfile",
                "metadata": {"name": f"profile-{i}", "labels": {"app": f"service-{i % BINDINGS}"}},
                "spec": {
                    "defaultAction": "SCMP_ACT_ERRNO",
                    "architectures": ["SCMP_ARCH_X86_64"],
                    "syscalls": [{"action": "SCMP_ACT_ALLOW", "names": SYSCALLS[: 40 + i % 40]}],
                },
                "status": {"status": "Installed", "localhostProfile": f"operator/profile-{i}.json"},
            }
        )
        for i in range(PROFILES)
    ]
    bindings = [
        ProfileBinding.model_validate(
            {
                "apiVersion": f"{group}/v1alpha1",
                "kind": "ProfileBinding",
                "metadata": {"name": f"binding-{i}", "namespace": NAMESPACE},
                "spec": {
                    "profileRef": {"kind": "SeccompProfile", "name": f"profile-{i * PROFILES // BINDINGS}"},
                    "image": bound_image(i),
                },
            }
        )
        for i in range(BINDINGS)
    ]
    return StaticSnapshot(bindings=bindings, seccomp_profiles=profiles)


def container(rng: random.Random, name: str, image: str) -> dict[str, Any]:
    env = [
        {"name": f"SETTING_{k}", "value": f"value-{rng.randrange(10**8)}"} for k in range(rng.randint(8, 25))
    ]
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["--config=/etc/app/config.yaml", f"--replica-id={rng.randrange(1000)}"],
        "env": env,
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/app", "readOnly": True},
            {"name": "kube-api-access-x1y2z", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"},
        ],
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 10},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080}, "periodSeconds": 5},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }


def admission_review(rng: random.Random, index: int) -> dict[str, Any]:
    images = [
        f"docker.io/library/sidecar-{rng.randrange(50)}:1.{rng.randrange(9)}"
        for _ in range(rng.randint(3, 6))
    ]
    if rng.random() < BOUND_FRACTION:
        images[rng.randrange(len(images))] = bound_image(rng.randrange(BINDINGS))
    name = f"web-{index}-{rng.randrange(16**5):05x}"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": f"web-{index}-",
            "namespace": NAMESPACE,
            "labels": {"app": "web", "pod-template-hash": f"{rng.randrange(16**8):08x}"},
            "annotations": {"example.com/build": f"{rng.randrange(10**12)}"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "x"}],
        },
        "spec": {
            "initContainers": [container(rng, "init", "docker.io/library/busybox:1.36")],
            "containers": [container(rng, f"c{i}", image) for i, image in enumerate(images)],
            "volumes": [{"name": "config", "configMap": {"name": "app-config"}}],
            "restartPolicy": "Always",
            "serviceAccountName": "default",
            "dnsPolicy": "ClusterFirst",
            "schedulerName": "default-scheduler",
        },
    }
    request = {
        "uid": f"{index:08d}-0000-4000-8000-{rng.randrange(16**12):012x}",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
        "requestResource": {"group": "", "version": "v1", "resource": "pods"},
        "name": name,
        "namespace": NAMESPACE,
        "operation": "CREATE",
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller", "groups": ["a"]},
        "object": pod,
        "oldObject": None,
        "dryRun": False,
        "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
    }
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def write_bodies(directory: Path) -> list[bytes]:
    rng = random.Random(SEED)
    bodies = [json.dumps(admission_review(rng, i)).encode() for i in range(REVIEWS)]
    for i, body in enumerate(bodies, start=1):
        (directory / f"{i}.json").write_bytes(body)
    return bodies


def read_bodies(directory: Path) -> list[bytes]:
    return [(directory / f"{i}.json").read_bytes() for i in range(1, REVIEWS + 1)]


# --- the server ------------------------------------------------------------------------------------


def run_server(port: int, cert_dir: Path, bodies_dir: Path) -> int:
    from webhooks.app import create_app
    from webhooks.decisions import decide_binding
    from webhooks.review import encode_response, parse_review
    from webhooks.server import serve

    snapshot = benchmark_snapshot()
    sizes = []
    for body in read_bodies(bodies_dir):
        api_version, request = parse_review(body)
        sizes.append(len(encode_response(api_version, request["uid"], decide_binding(request, snapshot))))
    fixed = fixed_response(round(statistics.mean(sizes)))
    app = create_app(snapshot, lambda: True)

    @app.post(CEILING_PATH, include_in_schema=False)
    async def ceiling() -> Response:
        return Response(fixed, media_type="application/json")

    async def floor(request: Request) -> Response:
        await request.body()
        return Response(fixed, media_type="application/json")

    app.add_admission_route(FLOOR_PATH, floor)
    return serve(
        app,
        host=HOST,
        port=port,
        cert_file=cert_dir / constants.TLS_CERT_FILE,
        key_file=cert_dir / constants.TLS_KEY_FILE,
        log_level="warning",
    )


def fixed_response(size: int) -> bytes:
    template = (
        '{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"%s","allowed":true}}'
    )
    return (template % ("0" * (size - len(template) + 2))).encode()


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    port: int
    context: ssl.SSLContext

    def url(self, path: str) -> str:
        return f"https://{HOST}:{self.port}{path}"

    def rss_mib(self) -> tuple[float, float]:
        """(VmRSS, VmHWM) of the server in MiB."""
        fields = dict(
            line.split(":", 1) for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines()
        )
        rss, peak = (int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM"))
        return rss, peak


def start_server(workdir: Path, bodies_dir: Path) -> ServerProcess:
    # Imported here, in the client only: cryptography and the Kubernetes client (which `certs` loads)
    # would add some 20 MiB to the server process whose RSS is measured.
    import certs

    ca = certs.generate_ca("bench-ca")
    certs.write_pair(workdir / "serving", certs.issue_certificate(ca, "bench", ip_addresses=[HOST]))
    (workdir / constants.CA_CERT_FILE).write_bytes(ca.cert_pem)
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    command = [sys.executable, __file__, "serve", str(port), str(workdir / "serving"), str(bodies_dir)]
    process = subprocess.Popen(command)
    context = ssl.create_default_context(cafile=workdir / constants.CA_CERT_FILE)
    server = ServerProcess(process, port, context)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            if httpx.get(server.url("/healthz"), verify=context).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit("server did not come up")


# --- load ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkResult:
    requests: int
    rate: float
    errors: int


def run_wrk(server: ServerProcess, path: str, bodies_dir: Path, seconds: int, connections: int) -> WrkResult:
    script = bodies_dir / "replay.lua"
    script.write_text(WRK_SCRIPT)
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", str(script), server.url(path)]
    env = {"BENCH_BODIES": str(bodies_dir), "BENCH_COUNT": str(REVIEWS), "PATH": "/usr/bin:/bin"}
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    requests = int(_field(output, r"(\d+) requests in"))
    errors = int(_field(output, r"Non-2xx or 3xx responses: (\d+)", "0"))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    return WrkResult(requests, float(_field(output, r"Requests/sec:\s+([\d.]+)")), errors)


def _field(output: str, pattern: str, default: str | None = None) -> str:
    match = re.search(pattern, output)
    if match:
        return match.group(1)
    if default is None:
        raise SystemExit(f"unexpected wrk output:\n{output}")
    return default


@dataclass(frozen=True)
class PacedResult:
    p50: float
    p99: float
    maximum: float
    errors: int
    count: int


async def run_paced(server: ServerProcess, path: str, bodies: Sequence[bytes]) -> PacedResult:
    """Requests on a fixed schedule; latency counts from the scheduled time, not from when one was sent."""
    limits = httpx.Limits(max_connections=PACED_CONNECTIONS, max_keepalive_connections=PACED_CONNECTIONS)
    headers = {"content-type": "application/json"}
    latencies: list[float] = []
    errors = 0
    warmup = PACED_RATE * PACED_WARMUP_SECONDS
    async with httpx.AsyncClient(verify=server.context, limits=limits, timeout=10) as client:
        loop = asyncio.get_running_loop()

        async def send(index: int, scheduled: float) -> None:
            nonlocal errors
            try:
                response = await client.post(
                    server.url(path), content=bodies[index % len(bodies)], headers=headers
                )
                failed = response.status_code != 200
            except httpx.HTTPError:
                failed = True
            if index >= warmup:
                latencies.append(loop.time() - scheduled)
                errors += failed

        start = loop.time() + 0.05
        tasks = []
        for index in range(PACED_RATE * (PACED_WARMUP_SECONDS + PACED_SECONDS)):
            scheduled = start + index / PACED_RATE
            await asyncio.sleep(max(0.0, scheduled - loop.time()))
            tasks.append(asyncio.create_task(send(index, scheduled)))
        await asyncio.gather(*tasks)
    latencies.sort()
    return PacedResult(
        p50=latencies[len(latencies) // 2],
        p99=latencies[int(len(latencies) * 0.99)],
        maximum=latencies[-1],
        errors=errors,
        count=len(latencies),
    )


def check_answers(server: ServerProcess, bodies: Sequence[bytes]) -> tuple[int, int]:
    """(patched, denied) over the replay set; fails on anything that is not an AdmissionReview answer."""
    patched = denied = 0
    with httpx.Client(verify=server.context) as client:
        for body in bodies:
            response = client.post(
                server.url(constants.PATH_BINDING), content=body, headers={"content-type": "application/json"}
            )
            answer = response.json()["response"]
            if response.status_code != 200 or answer["uid"] != json.loads(body)["request"]["uid"]:
                raise SystemExit(f"bad answer: {response.status_code} {response.text}")
            patched += "patch" in answer
            denied += not answer["allowed"]
    return patched, denied


# --- report ----------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def benchmark() -> int:
    if shutil.which("wrk") is None:
        print("wrk is needed: apt-get install -y wrk", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="webhook-bench-") as temp:
        workdir = Path(temp)
        bodies_dir = workdir / "bodies"
        bodies_dir.mkdir()
        bodies = write_bodies(bodies_dir)
        pods = [len(json.dumps(json.loads(body)["request"]["object"])) for body in bodies]
        print(
            f"replay set: {len(bodies)} pod CREATE AdmissionReviews, pods {min(pods)}-{max(pods)} B "
            f"(mean {statistics.mean(pods):.0f}), bodies up to {max(map(len, bodies))} B"
        )
        server = start_server(workdir, bodies_dir)
        try:
            return measure(server, bodies_dir, bodies)
        finally:
            server.process.terminate()
            server.process.wait(timeout=60)


ENDPOINTS: Final = {"webhook": constants.PATH_BINDING, "ceiling": CEILING_PATH, "floor": FLOOR_PATH}


def measure(server: ServerProcess, bodies_dir: Path, bodies: list[bytes]) -> int:
    patched, denied = check_answers(server, bodies)
    print(f"answers: {patched}/{len(bodies)} patched, {denied} denied")
    served = dict.fromkeys(ENDPOINTS.values(), 0)
    served[constants.PATH_BINDING] = len(bodies)
    errors = 0

    def wrk(path: str, seconds: int) -> float:
        nonlocal errors
        result = run_wrk(server, path, bodies_dir, seconds, THROUGHPUT_CONNECTIONS)
        served[path] += result.requests
        errors += result.errors
        return result.rate

    for path in ENDPOINTS.values():
        wrk(path, 3)  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in ENDPOINTS}
    for _ in range(THROUGHPUT_ROUNDS):
        for name, samples in rates.items():
            samples.append(wrk(ENDPOINTS[name], THROUGHPUT_SECONDS))
    rate = {name: statistics.mean(samples) for name, samples in rates.items()}
    print(
        f"\nthroughput, {THROUGHPUT_CONNECTIONS} connections, "
        f"mean of {THROUGHPUT_ROUNDS} x {THROUGHPUT_SECONDS}s (req/s):"
    )
    for name in ENDPOINTS:
        print(f"  {name:8} {rate[name]:8.0f}   runs {[round(sample) for sample in rates[name]]}")
    ratio = rate["webhook"] / rate["ceiling"]
    print(f"  webhook / ceiling {ratio:.2f}  target >= {TARGET_RATIO}: {verdict(ratio >= TARGET_RATIO)}")
    print(f"  webhook / floor   {rate['webhook'] / rate['floor']:.2f}")

    print(
        f"\npaced {PACED_RATE} req/s on a fixed schedule, {PACED_CONNECTIONS} connections, "
        f"{PACED_SECONDS}s (latency in ms):"
    )
    paced: dict[str, PacedResult] = {}
    for name, path in ENDPOINTS.items():
        result = paced[name] = asyncio.run(run_paced(server, path, bodies))
        served[path] += PACED_RATE * (PACED_WARMUP_SECONDS + PACED_SECONDS)
        errors += result.errors
        print(
            f"  {name:8} p50 {result.p50 * 1000:6.2f}  p99 {result.p99 * 1000:6.2f}  "
            f"max {result.maximum * 1000:6.2f}  ({result.count} requests, {result.errors} errors)"
        )
    p99, ceiling_p99 = paced["webhook"].p99, paced["ceiling"].p99
    p99_ok = p99 <= TARGET_P99_FACTOR * ceiling_p99 and p99 <= TARGET_P99_SECONDS
    print(
        f"  webhook p99 / ceiling p99 = {p99 / ceiling_p99:.2f}  "
        f"target <= {TARGET_P99_FACTOR} and <= {TARGET_P99_SECONDS * 1000:.0f} ms: {verdict(p99_ok)}"
    )

    webhook_requests = served[constants.PATH_BINDING]
    if webhook_requests < RSS_AFTER_REQUESTS:
        wrk(constants.PATH_BINDING, int((RSS_AFTER_REQUESTS - webhook_requests) / rate["webhook"] * 1.1) + 1)
    rss, peak = server.rss_mib()
    webhook_requests, all_requests = served[constants.PATH_BINDING], sum(served.values())
    print(f"\nserver RSS after {webhook_requests} webhook requests ({all_requests} in all):")
    rss_ok = verdict(rss <= TARGET_RSS_MIB)
    print(f"  {rss:.1f} MiB (peak {peak:.1f} MiB)  target <= {TARGET_RSS_MIB} MiB: {rss_ok}")
    print(f"errors: {errors}  target 0: {verdict(errors == 0)}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command")
    serve_parser = commands.add_parser(
        "serve", help="run the benchmark server (used by the benchmark itself)"
    )
    serve_parser.add_argument("port", type=int)
    serve_parser.add_argument("cert_dir", type=Path)
    serve_parser.add_argument("bodies_dir", type=Path)
    args = parser.parse_args()
    if args.command == "serve":
        return run_server(args.port, args.cert_dir, args.bodies_dir)
    return benchmark()


if __name__ == "__main__":
    sys.exit(main())
