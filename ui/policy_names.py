"""Policy versions on the pages by the names users see in ``mmedagent policies list`` (``v3``,
``base (1)``), never a bare database id that reads as a version number."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from app.policies import listed_name
from data.store import TrajectoryStore

NONE = "—"


def policy_names(store: TrajectoryStore, ids: Iterable[int | None]) -> dict[int | None, str]:
    """Each policy version id's listed name (``None``: no version recorded, shown as a dash)."""
    return {pid: NONE if pid is None else listed_name(store.get_policy(pid)) for pid in set(ids)}


def name_run_policies(store: TrajectoryStore, run: dict[str, Any]) -> dict[str, Any]:
    """``run`` (a ``run_report`` dict) with ``name`` on each of its policies and ``policy`` on each step."""
    names = policy_names(store, [st.get("policy_version_id") for st in run["steps"]])
    for p in run["policies"]:
        p["name"] = names[p["id"]]
    for st in run["steps"]:
        st["policy"] = names[st.get("policy_version_id")]
    return run
