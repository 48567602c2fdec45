"""Components a plan depends on (`depends_on`): found among the plans in the same folder, and whether each
has been cut over, read from its own journal."""

from __future__ import annotations

from pathlib import Path

from migrate.errors import MigrateError
from migrate.plan.loader import LoadedPlan, load_plan, plan_files
from migrate.state.direction import PLAN_ITEM
from migrate.state.journal import Journal


def sibling_plans(folder: Path) -> list[LoadedPlan]:
    """Every plan in `folder` that loads (secrets not required: only names and journals are read)."""
    out = []
    for path in plan_files([folder]):
        try:
            out.append(load_plan(path, require_env=False))
        except MigrateError:
            continue  # an invalid neighbour is `migrate validate`'s business, not this plan's
    return out


def cutover_status(loaded: LoadedPlan) -> str:
    """The cutover state a plan's journal records: idle | running | rolling_back | done | rolled_back."""
    journal = Journal(loaded.state_url, command="status")
    try:
        return str(journal.get(PLAN_ITEM, "cutover", {"status": "idle"})["status"])
    finally:
        journal.close()


def dependency_states(loaded: LoadedPlan) -> dict[str, str | None]:
    """component -> its cutover status, for each `depends_on` of the plan (None: no plan of that name in the
    plan's folder)."""
    wanted = loaded.plan.depends_on
    if not wanted:
        return {}
    found = {p.plan.component: p for p in sibling_plans(loaded.base_dir) if p.plan.component in wanted}
    return {name: cutover_status(found[name]) if name in found else None for name in wanted}
