"""nftables through libnftables' JSON API, confined to tables we own.

Every change is one transaction (``apply``). We never list or flush the whole
ruleset: only named tables of ours are read, created or deleted.
"""
from __future__ import annotations

import json

from ..core.errors import CNIError, IO_FAILURE

TYPE_CHECKING = False       # not from typing: importing it costs ~2 ms per plugin exec
if TYPE_CHECKING:
    from typing import Any

TABLE_PREFIX = "cnilab"


class Nft:
    def __init__(self) -> None:
        import nftables  # heavy-ish (ctypes + libnftables): only when rules are needed
        self._ctx = nftables.Nftables()
        self._ctx.set_json_output(True)
        self._ctx.set_handle_output(True)

    def _cmd(self, payload: dict) -> tuple[int, str, str]:
        return self._run_text(json.dumps(payload))

    def _run_text(self, text: str) -> tuple[int, str, str]:
        rc, out, err = self._ctx.cmd(text)
        return rc, out, err

    def apply(self, commands: list[dict], what: str = "nftables change") -> None:
        """Run ``commands`` (JSON command objects) as one atomic transaction."""
        if not commands:
            return
        rc, _out, err = self._run_text(json.dumps({"nftables": commands}))
        if rc != 0:
            raise CNIError(IO_FAILURE, f"{what} failed", err.strip()[:1000])

    def try_apply(self, commands: list[dict]) -> str | None:
        """Like apply, but returns the error text instead of raising."""
        if not commands:
            return None
        rc, _out, err = self._run_text(json.dumps({"nftables": commands}))
        return None if rc == 0 else (err.strip() or f"nft returned {rc}")

    def list_table(self, family: str, table: str) -> list[dict] | None:
        """The table's objects (chains, rules, ...) or None when it does not exist."""
        rc, out, err = self._run_text(f"list table {family} {table}")
        if rc != 0:
            if "No such file or directory" in err or "does not exist" in err:
                return None
            raise CNIError(IO_FAILURE, f"listing table {family} {table} failed", err.strip()[:500])
        data = json.loads(out or "{}").get("nftables", [])
        return [o for o in data if "metainfo" not in o]

    def table_exists(self, family: str, table: str) -> bool:
        return self.list_table(family, table) is not None

    def delete_selected(self, family: str, table: str, select, what: str) -> int:
        """Delete the rules ``select(objects of the table)`` picks; returns how many.

        Rule handles come from a listing, so a concurrent change can make the
        delete transaction fail: list again and retry a few times.
        """
        last = None
        for _ in range(3):
            rules = select(self.list_table(family, table))
            if not rules:
                return 0
            err = self.try_apply(plan_delete(rules))
            if err is None:
                return len(rules)
            last = err
        raise CNIError(IO_FAILURE, f"removing {what} failed", last or "")


def match(left: Any, right: Any, op: str = "==") -> dict:
    """A JSON match expression, in the form nftables lists it back."""
    return {"match": {"op": op, "left": left, "right": right}}


def canon(obj: Any) -> Any:
    """A hashable, order-independent form of a JSON expression (for comparisons)."""
    if isinstance(obj, dict):
        return tuple(sorted((k, canon(v)) for k, v in obj.items()))
    if isinstance(obj, list):
        return tuple(canon(v) for v in obj)
    return obj


_CHAIN_KEYS = ("type", "hook", "prio", "policy")


def base_in_place(objects: list[dict] | None, base: list[dict]) -> bool:
    """Whether a table's listing already holds what the idempotent ``base``
    commands (add table, add chains, flush entry chains and refill them) would
    write: every chain with the same type, hook, priority and policy, and every
    flushed chain with exactly the rules ``base`` adds to it, in order.

    Writing them again is not free even though it changes nothing: re-adding an
    existing chain or flushing one leaves kernel objects to release after the
    commit, and closing the nftables socket then waits for an RCU grace period
    (10-20 ms here) while holding the namespace's nftables commit mutex, which
    the next transaction in that namespace waits on (docs/performance.md). So a
    transaction carries the base only when the listing says it is needed; a
    concurrent change between listing and commit makes the commit fail and the
    caller rebuilds from a fresh listing (``apply_rebuilding``).
    """
    if objects is None:
        return False
    chains = {o["chain"]["name"]: o["chain"] for o in objects if "chain" in o}
    flushed: dict[str, list] = {}
    for cmd in base:
        (verb, target), = cmd.items()          # {"add": {"chain": {...}}}
        (kind, obj), = target.items()
        if verb == "add" and kind == "chain":
            live = chains.get(obj["name"])
            if live is None or any(live.get(k) != obj.get(k) for k in _CHAIN_KEYS if k in obj):
                return False
        elif verb == "flush" and kind == "chain":
            flushed[obj["name"]] = []
        elif verb == "add" and kind == "rule" and obj["chain"] in flushed:
            flushed[obj["chain"]].append(canon(obj["expr"]))
        elif not (verb == "add" and kind == "table"):
            return False              # a command this check does not understand
    for name, want in flushed.items():
        have = [canon([e for e in o["rule"].get("expr", []) if "counter" not in e])
                for o in objects if "rule" in o and o["rule"].get("chain") == name]
        if have != want:
            return False
    return True


def base_if_needed(objects: list[dict] | None, base: list[dict]) -> list[dict]:
    """``base`` unless the listing shows it in place already (``base_in_place``)."""
    return [] if base_in_place(objects, base) else base


def apply_rebuilding(nft: "Nft", build, what: str, retries: int = 8) -> None:
    """Run ``build()``'s transaction; rebuild and retry when a concurrent change
    removed a rule it meant to delete (the whole transaction is then void)."""
    last = ""
    for _ in range(retries):
        err = nft.try_apply(build())
        if err is None:
            return
        last = err
        if "No such file or directory" not in err and "does not exist" not in err:
            break
    raise CNIError(IO_FAILURE, f"{what} failed", last[:1000])


def rules_with_comment(objects: list[dict] | None, pred) -> list[dict]:
    """Rules whose comment satisfies ``pred`` (comments carry our attachment keys)."""
    out = []
    for o in objects or []:
        r = o.get("rule")
        if r is not None and pred(r.get("comment", "")):
            out.append(r)
    return out


def delete_rule_cmd(rule: dict) -> dict[str, Any]:
    return {"delete": {"rule": {"family": rule["family"], "table": rule["table"],
                                "chain": rule["chain"], "handle": rule["handle"]}}}


def plan_delete(rules) -> list[dict]:
    """Delete commands for listed rules (by handle)."""
    return [delete_rule_cmd(r) for r in rules]
