"""`migrate validate`: check plan files without connecting anywhere. Kept light (no database driver, no
Azure SDK), so linting plans in CI and editors starts at once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from migrate.errors import PlanError, PlanProblem
from migrate.plan.loader import load_plan, plan_files


@dataclass
class FileValidation:
    file: str
    ok: bool
    component: str | None = None
    problems: list[str] = field(default_factory=list)


@dataclass
class ValidateResult:
    files: list[FileValidation]

    @property
    def exit_code(self) -> int:
        return 0 if all(f.ok for f in self.files) else 2


def validate(paths: list[Path], require_env: bool = True) -> ValidateResult:
    """Check plans (files or folders of them) against the schema and their meaning; list every problem.

    `require_env=False` accepts unset `${VAR}`s, for CI jobs that lint plans without their secrets."""
    files = []
    for path in plan_files(paths):
        try:
            loaded = load_plan(path, require_env=require_env)
            files.append(FileValidation(str(path), True, loaded.plan.component))
        except PlanError as exc:
            files.append(FileValidation(str(path), False, problems=[str(p) for p in exc.problems]))
    if not files:
        raise PlanError([PlanProblem(", ".join(map(str, paths)), 0, 0, "", "no plan files found (*.yaml, *.yml)")])
    return ValidateResult(files)
