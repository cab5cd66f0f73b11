"""``down``: remove everything a lab's state file records, newest first.

Pod attachments first (a CNI DEL each, in parallel), then our nftables tables,
the namespaces (taking what the plugins made in them), processes by pid and
start time, files; the lab directory last. What is already gone is fine;
every error is collected and kept in the state file so ``down`` can run again.
Imports netlab.base.state, netlab.base.namespaces and the removers of netlab.features.k8s and netlab.features.impair.
"""
from __future__ import annotations

import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from ..base import namespaces as nsutil
from ..features.impair import remove as remove_impairment
from ..features.k8s import drop_table
from ..base.state import State, kill_recorded, remove_etc_netns_if_ours

Detacher = Callable[[dict, State], None]


def teardown(st: State, detach: Detacher, *, log: Callable[[str], None] = lambda s: None,
             keep_dir: bool = False, workers: int = 4) -> list[str]:
    """Remove every recorded resource, newest first. Returns the errors (also kept
    in the state file, which stays so that ``down`` can be run again)."""
    errors: list[str] = []
    if not os.path.exists(st.path):
        return errors          # already removed completely
    st.set(status="removing")
    # pod attachments first, in parallel (each a CNI DEL through its node's plugins)
    lock = threading.Lock()

    # "removed" marks are saved once per phase, not once per resource (each save
    # rewrites the whole file): a crash in between leaves resources marked present
    # that are gone, which a second down tolerates ("already gone")
    def det(res: dict) -> None:
        try:
            detach(res, st)
            with lock:
                st.update(res, removed=True, flush=False)
            log(f"detached pod {res['pod']}")
        except Exception as e:  # noqa: BLE001
            with lock:
                errors.append(f"attach {res.get('pod')}: {e}")
    pending = [r for r in reversed(st.resources) if r["kind"] == "attach" and not r.get("removed")]
    if pending:
        with ThreadPoolExecutor(max_workers=workers) as ex:
            list(ex.map(det, pending))
        st.save()
    # our nftables tables in node namespaces (Services, NetworkPolicy: netlab/features/k8s.py)
    for res in reversed(st.resources):
        if res["kind"] == "nft_table" and not res.get("removed"):
            try:
                drop_table(res)
                st.update(res, removed=True)
            except Exception as e:  # noqa: BLE001
                errors.append(f"nft_table {res.get('family')} {res.get('table')} in {res.get('ns')}: {e}")
    # then namespaces, in parallel (deleting one takes the links, routes, rules
    # and qdiscs the plugins made in it)
    def delns(res: dict) -> None:
        try:
            nsutil.delete(res["name"])
            if nsutil.exists(res["name"]):
                raise RuntimeError(f"namespace {res['name']} is still there")
            with lock:
                st.update(res, removed=True, flush=False)
        except Exception as e:  # noqa: BLE001
            with lock:
                errors.append(f"{res['kind']} {res.get('name')}: {e}")
    nss = [r for r in reversed(st.resources) if r["kind"] in ("netns", "netns_alias") and not r.get("removed")]
    aliases = [r for r in nss if r["kind"] == "netns_alias"]
    with ThreadPoolExecutor(max_workers=workers) as ex:
        list(ex.map(delns, aliases))
        list(ex.map(delns, [r for r in nss if r["kind"] == "netns"]))
    st.save()
    # the lab's processes (DNS, agent, daemons) stop independently of each other:
    # signal and wait for all of them at once instead of one after the other
    def stop(res: dict) -> None:
        try:
            kill_recorded(int(res.get("pid") or 0), res.get("starttime"))
            with lock:
                st.update(res, removed=True, flush=False)
            log(f"stopped {res.get('name', 'process')} (pid {res.get('pid')})")
        except Exception as e:  # noqa: BLE001
            with lock:
                errors.append(f"process {res.get('name')}: {e}")
    # (a containerd node's record is not one of these: it is stopped through CRI below)
    procs = [r for r in reversed(st.resources) if r["kind"] == "process" and not r.get("removed")
             and not r.get("containerd")]
    if procs:
        with ThreadPoolExecutor(max_workers=min(8, len(procs))) as ex:
            list(ex.map(stop, procs))
    for res in list(reversed(st.resources)):
        if res.get("removed") or res["kind"] in ("labdir", "attach"):
            continue   # attachments done above; the lab directory goes last, below
        kind = res["kind"]
        try:
            if kind == "process" and res.get("containerd"):
                # a containerd node (ADR 0025): leftover sandboxes through CRI, SIGTERM to
                # exactly its PID, then its tasks, mounts, cgroups and libcni cache entries
                from ..cri.containerd import Containerd
                rec = dict(res["containerd"], pid=res.get("pid") or 0,
                           starttime=res.get("starttime"))
                problems = [p for p in Containerd.from_record(rec).stop()
                            if not p.startswith(("killed ", "unmounted "))]
                # a sandbox whose DEL fails (a broken conflist fails DEL as it failed ADD)
                # left its state in the node namespace and the lab dir, both removed here
                for p in [p for p in problems if p.startswith("CRI ")]:
                    log(f"containerd could not remove a sandbox: {p}")
                    problems.remove(p)
                if problems:
                    raise RuntimeError("; ".join(problems))
                log(f"stopped {res.get('name')} (pid {res.get('pid')})")
            elif kind == "process":
                kill_recorded(int(res.get("pid") or 0), res.get("starttime"))
                log(f"stopped {res.get('name', 'process')} (pid {res.get('pid')})")
            elif kind in ("netns", "netns_alias"):
                nsutil.delete(res["name"])
                if nsutil.exists(res["name"]):
                    raise RuntimeError(f"namespace {res['name']} is still there")
                log(f"deleted namespace {res['name']}")
            elif kind == "etcnetns":
                d = res["path"]
                for fn in res.get("files", []):
                    try:
                        os.unlink(os.path.join(d, fn))
                    except FileNotFoundError:
                        pass
                if res.get("created_dir"):
                    try:
                        os.rmdir(d)
                    except FileNotFoundError:
                        pass
                # /etc/netns itself goes with the last lab's entries if netlab made
                # it, whichever lab that was (labs come and go in any order)
                remove_etc_netns_if_ours(os.path.dirname(d))
            elif kind == "impair":
                errs = remove_impairment(res)      # its namespaces are usually gone already: nothing to do
                if errs:
                    raise RuntimeError("; ".join(errs))
            elif kind == "nft_table":
                drop_table(res)
            elif kind == "file":
                try:
                    os.unlink(res["path"])
                except FileNotFoundError:
                    pass
            else:
                raise RuntimeError(f"unknown resource kind {kind!r}")
            # files are marked in memory (saved below); processes and the rest at once
            st.update(res, removed=True, flush=kind not in ("etcnetns", "file"))
        except Exception as e:  # keep going: remove everything we can
            errors.append(f"{kind} {res.get('name') or res.get('pod') or res.get('path')}: {e}")
    st.save()
    if errors:
        st.set(status="remove-failed", errors=errors)
        return errors
    ld = st.find("labdir")
    if ld and ld[0].get("created") and not keep_dir:
        shutil.rmtree(ld[0]["path"], ignore_errors=True)
        for parent in ld[0].get("created_parents", []):
            try:
                os.rmdir(parent)       # only when empty: other labs may live there
            except OSError:
                break
    else:
        st.set(status="removed")
        try:
            os.unlink(st.path)
        except FileNotFoundError:
            pass
    return errors
