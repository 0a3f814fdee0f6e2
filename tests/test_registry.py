"""The loopback registry that serves the node images to pulls the kubelet must make (spo/registry.py)."""

import http.client
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.constants import (
    DISTRIBUTION_API_VERSION,
    HEADER_CONTENT_DIGEST,
    HEADER_DISTRIBUTION_API_VERSION,
    MEDIA_TYPE_OCI_MANIFEST,
)
from spo import registry
from spo.images import ImageSpec, layout_tar, oci_layout, regular
from spo.registry import Layout, RegistryError, parse_layout, respond

SPECS = [
    ImageSpec("ubuntu", ((regular("/bin/bash", b"#!/bin/sh\n", 0o755),),), ("/bin/bash",)),
    ImageSpec(
        "registry.fedoraproject.org/fedora-minimal:latest", ((regular("/etc/os", b"fedora"),),), ("sh",)
    ),
]
FILES = oci_layout(SPECS, "amd64")
INDEX = json.loads(FILES["index.json"])
UBUNTU_MANIFEST = INDEX["manifests"][0]["digest"]
UBUNTU_LAYER = json.loads(FILES["blobs/sha256/" + UBUNTU_MANIFEST.removeprefix("sha256:")])["layers"][0][
    "digest"
]


@pytest.fixture(scope="module")
def layout() -> Layout:
    return parse_layout(FILES)


def test_api_root_answers(layout: Layout) -> None:
    assert respond(layout, "GET", "/v2/").status == 200


def test_manifest_by_tag_as_containerd_asks_for_it(layout: Layout) -> None:
    response = respond(layout, "HEAD", "/v2/library/ubuntu/manifests/latest?ns=docker.io")
    assert response.status == 200
    assert dict(response.headers) == {
        "Content-Type": MEDIA_TYPE_OCI_MANIFEST,
        HEADER_CONTENT_DIGEST: UBUNTU_MANIFEST,
    }
    assert response.body == FILES["blobs/sha256/" + UBUNTU_MANIFEST.removeprefix("sha256:")]


def test_full_name_in_the_path_needs_no_namespace(layout: Layout) -> None:
    assert respond(layout, "GET", "/v2/docker.io/library/ubuntu/manifests/latest").status == 200


def test_manifest_by_digest_and_its_blobs(layout: Layout) -> None:
    assert (
        respond(layout, "GET", f"/v2/library/ubuntu/manifests/{UBUNTU_MANIFEST}?ns=docker.io").status == 200
    )
    blob = respond(layout, "GET", f"/v2/library/ubuntu/blobs/{UBUNTU_LAYER}?ns=docker.io")
    assert (blob.status, dict(blob.headers)[HEADER_CONTENT_DIGEST]) == (200, UBUNTU_LAYER)
    assert blob.body == FILES["blobs/sha256/" + UBUNTU_LAYER.removeprefix("sha256:")]


@pytest.mark.parametrize(
    ("target", "code"),
    [
        ("/v2/library/ubuntu/manifests/22.04?ns=docker.io", "MANIFEST_UNKNOWN"),
        ("/v2/library/ubuntu/manifests/latest?ns=quay.io", "MANIFEST_UNKNOWN"),
        ("/v2/library/ubuntu/manifests/latest", "MANIFEST_UNKNOWN"),
        (f"/v2/fedora-minimal/manifests/{UBUNTU_MANIFEST}?ns=registry.fedoraproject.org", "MANIFEST_UNKNOWN"),
        ("/v2/library/ubuntu/blobs/sha256:" + "0" * 64 + "?ns=docker.io", "BLOB_UNKNOWN"),
        (f"/v2/library/nothere/blobs/{UBUNTU_LAYER}?ns=docker.io", "BLOB_UNKNOWN"),
        ("/v2/_catalog", "NAME_UNKNOWN"),
    ],
)
def test_what_is_not_served_is_not_found(layout: Layout, target: str, code: str) -> None:
    response = respond(layout, "GET", target)
    assert response.status == 404
    assert json.loads(response.body)["errors"][0]["code"] == code


@pytest.mark.parametrize("method", ["PUT", "POST", "PATCH", "DELETE"])
def test_only_pulls_are_served(layout: Layout, method: str) -> None:
    assert respond(layout, method, "/v2/library/ubuntu/manifests/latest?ns=docker.io").status == 405


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "not an OCI image layout with named images"),
        ({"index.json": b"[]"}, "not an OCI image layout with named images"),
        ({"index.json": FILES["index.json"]}, "the layout lacks the manifests"),
    ],
)
def test_bad_layout_is_refused(files: dict[str, bytes], message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        parse_layout(files)


def test_hosts_file_makes_the_server_every_registrys(tmp_path: Path) -> None:
    written = registry.write_hosts_dir(tmp_path, "http://127.0.0.1:5000")
    assert written == tmp_path / "_default" / "hosts.toml"
    assert written.read_text() == 'server = "http://127.0.0.1:5000"\n'


# --- over HTTP on loopback ----------------------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[registry.RegistryServer]:
    tar = tmp_path / "images.tar"
    tar.write_bytes(layout_tar(FILES))
    running = registry.serve(tar)
    thread = threading.Thread(target=running.serve_forever, daemon=True)
    thread.start()
    yield running
    running.shutdown()
    running.server_close()
    thread.join()


def _request(server: registry.RegistryServer, method: str, target: str) -> http.client.HTTPResponse:
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(str(host), port, timeout=30)
    connection.request(method, target)
    return connection.getresponse()


def test_server_answers_get_and_head(server: registry.RegistryServer) -> None:
    target = "/v2/library/ubuntu/manifests/latest?ns=docker.io"
    got = _request(server, "GET", target)
    body = got.read()
    assert (got.status, got.getheader(HEADER_DISTRIBUTION_API_VERSION)) == (200, DISTRIBUTION_API_VERSION)
    assert (got.getheader(HEADER_CONTENT_DIGEST), got.getheader("Content-Length")) == (
        UBUNTU_MANIFEST,
        str(len(body)),
    )
    head = _request(server, "HEAD", target)
    assert (head.status, head.getheader("Content-Length"), head.read()) == (200, str(len(body)), b"")
    assert _request(server, "GET", "/v2/library/nothere/manifests/latest?ns=docker.io").status == 404
    assert server.url.startswith("http://127.0.0.1:")


def test_command_explains_an_unreadable_tar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.tar").write_bytes(b"not a tar")
    assert registry.main([str(tmp_path / "bad.tar")]) == 1
    assert capsys.readouterr().err.startswith(f"cannot serve {tmp_path}/bad.tar: cannot read")
