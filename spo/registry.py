"""A read-only image registry on loopback serving the node images from their OCI-layout tar.

Importing the images is enough for pods whose pull policy is IfNotPresent, but Kubernetes defaults the
policy to Always for `:latest` and untagged images (the docs' `fedora-minimal:latest` and `ubuntu` among
them): the kubelet then asks containerd to pull, and with no registry reachable the pod fails with
ErrImagePull. containerd's registry host configuration (`hosts_toml`) sends those pulls here instead. The
server answers the pull subset of the OCI distribution API (GET and HEAD of /v2/, of manifests by tag or
digest and of blobs), from memory, and nothing else.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from api.constants import (
    ANNOTATION_CONTAINERD_IMAGE_NAME,
    CONTAINERD_DEFAULT_HOST_DIR,
    CONTAINERD_HOSTS_FILE,
    DISTRIBUTION_API_VERSION,
    HEADER_CONTENT_DIGEST,
    HEADER_DISTRIBUTION_API_VERSION,
)

_ROUTE = re.compile(r"/v2/(?P<name>[^?#]+)/(?P<kind>manifests|blobs)/(?P<reference>[^/]+)")


class RegistryError(RuntimeError):
    """The layout cannot be served; the message says why."""


@dataclass(frozen=True)
class Layout:
    """What the server serves: tags and manifests by repository, and every blob by digest."""

    tags: Mapping[str, str]  # "registry/repository:tag" -> manifest digest
    manifests: Mapping[str, tuple[str, str]]  # manifest digest -> (repository, media type)
    blobs: Mapping[str, bytes]  # digest -> content


@dataclass(frozen=True)
class Response:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def parse_layout(files: Mapping[str, bytes]) -> Layout:
    """Index an OCI image layout's files (path -> content), as `spo.images.oci_layout` writes them."""
    try:
        index = json.loads(files["index.json"])
        blobs = {
            "sha256:" + path.removeprefix("blobs/sha256/"): data
            for path, data in files.items()
            if path.startswith("blobs/sha256/")
        }
        tags: dict[str, str] = {}
        manifests: dict[str, tuple[str, str]] = {}
        for descriptor in index["manifests"]:
            name = descriptor["annotations"][ANNOTATION_CONTAINERD_IMAGE_NAME]
            repository, _, tag = name.rpartition(":")
            if "/" in tag or "@" in name:
                raise RegistryError(f"image name {name!r} is not repository:tag")
            tags[name] = descriptor["digest"]
            manifests[descriptor["digest"]] = (repository, descriptor["mediaType"])
    except (KeyError, TypeError, ValueError) as error:
        raise RegistryError(f"not an OCI image layout with named images: {error!r}") from error
    missing = sorted(digest for digest in manifests if digest not in blobs)
    if missing:
        raise RegistryError(f"the layout lacks the manifests {missing}")
    return Layout(tags, manifests, blobs)


def _error(status: int, code: str, message: str) -> Response:
    body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
    return Response(status, (("Content-Type", "application/json"),), body)


def respond(layout: Layout, method: str, target: str) -> Response:
    """The answer to one request, to HEAD as to GET (the shell sends no body for HEAD).

    `ns` names the registry a mirrored request was meant for (containerd adds it to requests it sends to a
    mirror), so that `library/ubuntu?ns=docker.io` finds `docker.io/library/ubuntu`.
    """
    if method not in {"GET", "HEAD"}:
        return _error(405, "UNSUPPORTED", "this registry only serves pulls")
    url = urlsplit(target)
    if url.path in {"/v2", "/v2/"}:
        return Response(200, (("Content-Type", "application/json"),), b"{}")
    route = _ROUTE.fullmatch(url.path)
    if route is None:
        return _error(404, "NAME_UNKNOWN", f"no route for {url.path}")
    namespace = parse_qs(url.query).get("ns", [""])[0]
    name = f"{namespace}/{route['name']}" if namespace else route["name"]
    return _content(layout, name, route["kind"], route["reference"])


def _content(layout: Layout, repository: str, kind: str, reference: str) -> Response:
    if kind == "manifests":
        digest = (
            reference if reference.startswith("sha256:") else layout.tags.get(f"{repository}:{reference}")
        )
        if digest is None or layout.manifests.get(digest, ("", ""))[0] != repository:
            return _error(404, "MANIFEST_UNKNOWN", f"{repository}:{reference} is not served here")
        media_type = layout.manifests[digest][1]
    else:
        digest, media_type = reference, "application/octet-stream"
        if digest not in layout.blobs or not any(repo == repository for repo, _ in layout.manifests.values()):
            return _error(404, "BLOB_UNKNOWN", f"{repository}@{reference} is not served here")
    body = layout.blobs[digest]
    headers = (("Content-Type", media_type), (HEADER_CONTENT_DIGEST, digest))
    return Response(200, headers, body)


def hosts_toml(url: str) -> str:
    """containerd's host configuration making `url` the server of a registry (of every one, as `_default`).

    As the server, not a mirror: containerd falls back from a mirror to the real registry, and that lookup
    would leave the machine; with `url` as the server an image we do not serve fails here, on loopback.
    containerd still names the registry it meant in the `ns` parameter.
    """
    return f'server = "{url}"\n'


def write_hosts_dir(config_path: Path, url: str) -> Path:
    """Write `config_path`/_default/hosts.toml (containerd's CRI `registry.config_path` = `config_path`)."""
    target = config_path / CONTAINERD_DEFAULT_HOST_DIR / CONTAINERD_HOSTS_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(hosts_toml(url))
    return target


# --- the HTTP shell ---------------------------------------------------------------------------------


class RegistryServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, layout: Layout, address: tuple[str, int]) -> None:
        self.layout = layout
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


class _Handler(BaseHTTPRequestHandler):
    server: RegistryServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._answer()

    def do_HEAD(self) -> None:
        self._answer()

    def _answer(self) -> None:
        response = respond(self.server.layout, self.command, self.path)
        self.send_response(response.status)
        for header, value in response.headers:
            self.send_header(header, value)
        self.send_header(HEADER_DISTRIBUTION_API_VERSION, DISTRIBUTION_API_VERSION)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged: the kubelet's and containerd's logs say what was pulled."""


def load(tar_path: Path) -> Layout:
    try:
        with tarfile.open(tar_path) as archive:
            files = {
                member.name: archive.extractfile(member).read()  # type: ignore[union-attr]
                for member in archive.getmembers()
                if member.isfile()
            }
    except (OSError, tarfile.TarError) as error:
        raise RegistryError(f"cannot read {tar_path}: {error}") from error
    return parse_layout(files)


def serve(tar_path: Path, host: str = "127.0.0.1", port: int = 0) -> RegistryServer:
    """A server bound to `host`:`port` (0: any free port; see `.url`); call `serve_forever` to run it."""
    return RegistryServer(load(tar_path), (host, port))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spo.registry", description="Serve an OCI-layout tar as a read-only registry."
    )
    parser.add_argument("tar", type=Path)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        server = serve(args.tar, port=args.port)
    except (RegistryError, OSError) as error:
        print(f"cannot serve {args.tar}: {error}", file=sys.stderr)
        return 1
    print(server.url, flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
