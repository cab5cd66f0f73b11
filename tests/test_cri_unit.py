"""netlab.cri without a runtime: the proto, the client against an in-process gRPC server,
the pause image tarball and the containerd config."""
from __future__ import annotations

import hashlib
import json
import os
import tarfile
import tomllib
from concurrent import futures

import pytest

grpc = pytest.importorskip("grpc", reason="grpcio is not installed (make setup installs it)")

from netlab.cri import api, containerd, gocni, image  # noqa: E402


def test_proto_compiles_with_cri_names_and_numbers():
    m = api.messages()
    req = m["RunPodSandboxRequest"]()
    fields = req.DESCRIPTOR.fields_by_name
    assert req.DESCRIPTOR.full_name == "runtime.v1.RunPodSandboxRequest"
    assert (fields["config"].number, fields["runtime_handler"].number) == (1, 2)
    pm = m["PortMapping"].DESCRIPTOR.fields_by_name
    assert [pm[k].number for k in ("protocol", "container_port", "host_port", "host_ip")] \
        == [1, 2, 3, 4]
    cfg = m["PodSandboxConfig"].DESCRIPTOR.fields_by_name
    assert (cfg["dns_config"].number, cfg["annotations"].number, cfg["linux"].number) == (4, 7, 8)


class FakeRuntime:
    """A CRI server in-process: answers RunPodSandbox/PodSandboxStatus, records requests."""

    def __init__(self, socket: str) -> None:
        self.m = api.messages()
        self.requests: list = []
        handlers = {
            "RunPodSandbox": grpc.unary_unary_rpc_method_handler(
                self.run, request_deserializer=self.m["RunPodSandboxRequest"].FromString,
                response_serializer=lambda r: r.SerializeToString()),
            "PodSandboxStatus": grpc.unary_unary_rpc_method_handler(
                self.status, request_deserializer=self.m["PodSandboxStatusRequest"].FromString,
                response_serializer=lambda r: r.SerializeToString()),
        }
        self.server = grpc.server(futures.ThreadPoolExecutor(2))
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("runtime.v1.RuntimeService", handlers),))
        self.server.add_insecure_port(f"unix://{socket}")
        self.server.start()

    def run(self, request, context):
        self.requests.append(request)
        if request.config.metadata.name == "broken":
            context.abort(grpc.StatusCode.UNKNOWN, 'plugin type="bridge" failed (add): boom')
        return self.m["RunPodSandboxResponse"](pod_sandbox_id="sb-1")

    def status(self, request, context):
        st = self.m["PodSandboxStatus"](id=request.pod_sandbox_id, state=1)
        st.network.ip = "10.1.0.2"
        st.metadata.name = "web"
        resp = self.m["PodSandboxStatusResponse"](status=st)
        resp.info["info"] = json.dumps({"pid": 42, "runtimeSpec": {"linux": {"namespaces": [
            {"type": "pid"}, {"type": "network", "path": "/run/x/netns/cni-1"}]}}})
        return resp


@pytest.fixture
def fake(tmp_path):
    f = FakeRuntime(str(tmp_path / "cri.sock"))
    try:
        yield f, str(tmp_path / "cri.sock")
    finally:
        f.server.stop(0)


def test_client_builds_requests_and_decodes_replies(fake):
    server, sock = fake
    with api.RuntimeClient(sock, timeout=10, default_cgroup_parent="/cnilab-x") as c:
        c.wait_ready(10)
        spec = api.PodSpec("web", namespace="team",
                           dns=api.DNSConfig(("10.96.0.10",), ("svc.local",), ("ndots:5",)),
                           port_mappings=[api.PortMapping(80, 8080, "udp", "192.0.2.1")],
                           annotations={"kubernetes.io/ingress-bandwidth": "1M"})
        assert c.run_pod_sandbox(spec) == "sb-1" and c.created == {"sb-1"}
        st = c.pod_sandbox_status("sb-1", verbose=True)
    req = server.requests[0].config
    assert (req.metadata.name, req.metadata.namespace, req.hostname) == ("web", "team", "web")
    assert list(req.dns_config.servers) == ["10.96.0.10"] and list(req.dns_config.options) \
        == ["ndots:5"]
    pm = req.port_mappings[0]
    assert (pm.protocol, pm.container_port, pm.host_port, pm.host_ip) == (1, 80, 8080, "192.0.2.1")
    assert req.linux.cgroup_parent == "/cnilab-x"
    assert dict(req.annotations) == {"kubernetes.io/ingress-bandwidth": "1M"}
    assert (st.state, st.ip, st.name) == ("SANDBOX_NOTREADY", "10.1.0.2", "web")
    assert (st.netns_path, st.pid) == ("/run/x/netns/cni-1", 42)


def test_client_errors_carry_the_runtime_message(fake):
    _, sock = fake
    with api.RuntimeClient(sock, timeout=10) as c:
        with pytest.raises(api.CRIError) as e:
            c.run_pod_sandbox(api.PodSpec("broken"))
        assert e.value.code == "UNKNOWN" and "failed (add): boom" in e.value.details
        assert c.created == set()
        with pytest.raises(ValueError):
            c.run_pod_sandbox(api.PodSpec("x", port_mappings=[api.PortMapping(1, 2, "ICMP")]))
        with pytest.raises(api.CRIError) as e:
            c.stop_pod_sandbox("sb-1")                     # not served by the fake
        assert e.value.code == "UNIMPLEMENTED"


def test_wait_ready_times_out_with_a_clear_error(tmp_path):
    with api.RuntimeClient(str(tmp_path / "none.sock")) as c:
        with pytest.raises(api.CRIError) as e:
            c.wait_ready(0.3)
    assert e.value.code == "UNAVAILABLE" and "none.sock" in e.value.details


def test_pause_image_is_a_valid_deterministic_oci_layout(tmp_path):
    a, b = tmp_path / "a.tar", tmp_path / "b.tar"
    assert image.build_pause_image(str(a)) == image.build_pause_image(str(b))
    assert a.read_bytes() == b.read_bytes()
    with tarfile.open(a) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    for name, data in files.items():                     # every blob is named by its digest
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]
    index = json.loads(files["index.json"])
    desc = index["manifests"][0]
    assert desc["annotations"]["io.containerd.image.name"] == image.PAUSE_REF
    manifest = json.loads(files["blobs/sha256/" + desc["digest"].split(":")[1]])
    config = json.loads(files["blobs/sha256/" + manifest["config"]["digest"].split(":")[1]])
    assert config["config"]["Entrypoint"] == ["/bin/sleep", "inf"]
    layer = files["blobs/sha256/" + manifest["layers"][0]["digest"].split(":")[1]]
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]
    with tarfile.open(fileobj=__import__("io").BytesIO(layer)) as lt:
        members = {m.name: m for m in lt.getmembers()}
    assert members["bin/sleep"].issym() and members["bin/sleep"].linkname == "busybox"
    assert members["bin/busybox"].mode == 0o755


def test_pause_image_without_busybox_is_a_clear_error(tmp_path):
    with pytest.raises(image.ImageError, match="busybox-static"):
        image.build_pause_image(str(tmp_path / "x.tar"), busybox=str(tmp_path / "nope"))


def test_containerd_config_keeps_everything_under_the_workdir(tmp_path):
    o = containerd.ContainerdOptions(netns="node1", workdir=str(tmp_path / "w"),
                                     cni_bin_dir="/opt/our/bin")
    c = containerd.Containerd(o)
    cfg = tomllib.loads(containerd.config_toml(o, c.paths))
    w = str(tmp_path / "w")
    for key in ("root", "state", "temp"):
        assert cfg[key].startswith(w + "/")
    assert cfg["grpc"]["address"] == c.socket and c.socket.startswith(w + "/")
    assert cfg["plugins"]["io.containerd.internal.v1.opt"]["path"].startswith(w + "/")
    cri = cfg["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["restrict_oom_score_adj"] is True and cri["netns_mounts_under_state_dir"] is True
    assert cri["sandbox_image"] == image.PAUSE_REF
    assert cri["cni"] == {"bin_dir": "/opt/our/bin", "conf_dir": w + "/net.d", "max_conf_num": 1}
    assert cri["containerd"]["runtimes"]["runc"]["options"]["Root"].startswith(w + "/")
    assert c.cgroup_parent == "/cnilab-w"
    assert not os.path.exists(w)                          # nothing written before start()


def test_go_cni_probe_can_say_yes():
    """The probe answers True for the spec's spelling, so a False for go-cni's is real."""
    assert gocni.ours_read({"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                           {"ingressRate": 8000, "ingressBurst": 8000})
    assert not gocni.ours_read({"hostPort": 8080}, {"ingressRate": 8000, "ingressBurst": 8000})
    assert set(gocni.port_mapping(1, 2)) == {"HostPort", "ContainerPort", "Protocol", "HostIP"}


def test_teardown_removes_only_our_cni_cache_entries_and_dirs_it_created(tmp_path, monkeypatch):
    cache = tmp_path / "cni"
    monkeypatch.setattr(containerd, "CNI_CACHE", str(cache))
    c = containerd.Containerd(containerd.ContainerdOptions(
        netns="n", workdir=str(tmp_path / "w"), cni_bin_dir="/b"))
    client = api.RuntimeClient(str(tmp_path / "none.sock"))
    c._clients.append(client)
    client.created.add("abc123")
    results = cache / "results"
    results.mkdir(parents=True)                       # made during "our" run
    (results / "ctdnet-abc123-eth0").write_text("{}")
    (results / "cni-loopback-abc123-lo").write_text("{}")
    c._remove_cni_cache_entries()
    assert not cache.exists()                         # ours, and left empty: removed
    results.mkdir(parents=True)
    (results / "podman-other99-eth0").write_text("{}")  # someone else's
    (results / "ctdnet-abc123-eth0").write_text("{}")
    c._remove_cni_cache_entries()
    assert os.listdir(results) == ["podman-other99-eth0"]
    c2 = containerd.Containerd(containerd.ContainerdOptions(
        netns="n", workdir=str(tmp_path / "w2"), cni_bin_dir="/b"))
    (results / "podman-other99-eth0").unlink()
    c2._remove_cni_cache_entries()
    assert results.is_dir()                           # existed before c2: kept, even empty
    client.close()
