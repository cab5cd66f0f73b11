"""Pods on the CNI runtime: the plugins' environment in a lab, a runtime for
one node namespace, and DEL of a recorded attachment (``down``, a replaced
pod). Used by the builder, by scenario faults and by ``netlab status``.

Imports netlab.base.namespaces, netlab.base.state and the runtime (cniruntime.runtime).
"""
from __future__ import annotations

import json
import os

from ..base import namespaces as nsutil
from ..base import state as statemod

REFERENCE_CNI = "/usr/lib/cni"


def plugin_env(lab_dir: str, agent_socket: str | None) -> dict[str, str]:
    """The environment plugins run with: never a node-wide agent, only the lab's;
    node lock files in the lab dir (removed with it), not in /run/cnilab."""
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
           "CNILAB_RUN_DIR": os.path.join(lab_dir, "run")}
    if agent_socket:
        env.update(CNILAB_AGENT="on", CNILAB_AGENT_SOCKET=agent_socket)
    else:
        env["CNILAB_AGENT"] = "off"
    return env


def runtime_for(lab_dir: str, node_ns: str, cni_path: str, agent_socket: str | None = None):
    from cniruntime.runtime import Runtime
    return Runtime([cni_path], cache_dir=os.path.join(lab_dir, "cni-cache"),
                   host_netns=nsutil.path(node_ns), log_path=os.path.join(lab_dir, "cni.log"),
                   env=plugin_env(lab_dir, agent_socket), agent_direct=True)


def detach(res: dict, st: statemod.State) -> None:
    """DEL an attachment recorded in the state (also when the pod netns is gone)."""
    from cniruntime.runtime import Runtime
    if res.get("runtime") == "containerd":
        detach_sandbox(res, st)
        return
    if not nsutil.exists(os.path.basename(res["node_ns"]) if "/" in res["node_ns"] else res["node_ns"]):
        return   # the node (and everything the plugins made in it) is already gone
    cni_path = res.get("cni_path") or st.data.get("cniPath") or REFERENCE_CNI
    sock = st.data.get("agentSocket")
    rt = Runtime([cni_path], cache_dir=os.path.join(st.lab_dir, "cni-cache"),
                 host_netns=nsutil.path(res["node_ns"]), log_path=os.path.join(st.lab_dir, "cni.log"),
                 env=plugin_env(st.lab_dir, sock if sock and os.path.exists(sock) else None),
                 agent_direct=True)
    netns_path = nsutil.path(res["netns"]) if nsutil.exists(res["netns"]) else ""
    rt.delete(res["conflist"], netns_path, res["container_id"], res["ifname"],
              capability_args=res.get("capability_args") or {}, cni_args=res.get("cni_args"))


def read_cri_cni_cache(network: str, sandbox_id: str, ifname: str) -> dict:
    """libcni's cache entry for a sandbox containerd attached (its default cache dir):
    the result the plugins returned, the capability args go-cni sent, the config (decoded)."""
    import base64
    from ..cri.containerd import CNI_CACHE
    path = os.path.join(CNI_CACHE, "results", f"{network}-{sandbox_id}-{ifname}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise BuildError(f"no libcni cache entry {path} for sandbox {sandbox_id[:12]}: {e}") from None
    if isinstance(data.get("config"), str):
        try:
            data["config"] = json.loads(base64.b64decode(data["config"]))
        except ValueError:
            data["config"] = None
    return data


def detach_sandbox(res: dict, st: statemod.State) -> None:
    """A containerd pod: StopPodSandbox + RemovePodSandbox, so containerd runs the
    plugins' DEL and removes its namespace. When containerd is gone, netlab runs the
    same DEL itself (recorded conflist, sandbox ID, capability args); the sandbox's
    mounts and processes go with the containerd record (netlab.cri.Containerd.stop)."""
    from ..cri import RuntimeClient
    from ..cri.api import CRIError
    sid = res.get("sandbox_id")
    if not sid:
        return          # RunPodSandbox never returned: the containerd record removes leftovers
    try:
        with RuntimeClient(res["socket"], timeout=60) as c:
            if not os.path.exists(res["socket"]):
                raise CRIError("connect", "UNAVAILABLE", f"no socket {res['socket']}")
            c.wait_ready(2)
            c.stop_pod_sandbox(sid)
            c.remove_pod_sandbox(sid)
        return
    except CRIError as e:
        if e.code == "NOT_FOUND":
            return      # removed already (down is idempotent)
        if e.code not in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
            raise
    if not res.get("conflist"):
        return
    from cniruntime.runtime import Runtime
    if not nsutil.exists(res["node_ns"]):
        return
    netns = res.get("sandbox_netns") or ""
    rt = Runtime([res.get("cni_path") or st.data.get("cniPath")], cache_dir=os.path.join(st.lab_dir, "cni-cache"),
                 host_netns=nsutil.path(res["node_ns"]), log_path=os.path.join(st.lab_dir, "cni.log"),
                 env=plugin_env(st.lab_dir, None))
    rt.delete(res["conflist"], netns if os.path.exists(netns) else "", sid, res["ifname"],
              capability_args=res.get("capability_args") or {})
