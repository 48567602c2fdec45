"""Progress for people: human units, speed and file counts, on a terminal and in plain CI logs."""

from __future__ import annotations

import io
import re

from rich.console import Console

from migrate import progress as progress_module
from migrate.progress import ConsoleProgress, amount, speed


def test_amounts_and_speeds_are_in_human_units() -> None:
    assert amount(150994944, "B") == "144.0 MiB"
    assert amount(838860800, "B") == "800.0 MiB"
    assert amount(12345, "rows") == "12,345 rows"
    assert speed(50 * 1024 * 1024, "B") == "50.0 MiB/s"
    assert speed(12300, "rows") == "12,300 rows/s"
    assert speed(None, "B") == ""


def test_plain_progress_lines_show_units_percent_speed_and_files(monkeypatch) -> None:
    """CI logs (no terminal): a line every few seconds with done/total in MiB, percent, speed and files."""
    monkeypatch.setattr(progress_module, "PLAIN_EVERY", 0.0)
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=False)
    with ConsoleProgress(console) as bars:
        task = bars.task("copy docs", total=800 * 1024 * 1024, unit="B", items_total=2000)
        task.advance(144 * 1024 * 1024, items=123)
        task.close()
    line = out.getvalue().strip()
    assert line.startswith("copy docs: 144.0 MiB of 800.0 MiB (18%), "), line
    assert re.search(r", \d+\.\d (KiB|MiB|GiB|TiB)/s, 123/2,000 files$", line), line
    assert "150994944" not in line


def test_terminal_bars_show_units_speed_and_files() -> None:
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=True, color_system=None)
    with ConsoleProgress(console) as bars:
        task = bars.task("epr: load", total=50_000, unit="rows")
        task.advance(12_345)
        bars.bars.refresh()
        files = bars.task("copy [docs]", total=800 * 1024 * 1024, unit="B", items_total=40)
        files.advance(144 * 1024 * 1024, items=12)
        bars.bars.refresh()
    text = out.getvalue()
    assert "12,345 rows/50,000 rows" in text
    assert "144.0 MiB/800.0 MiB" in text and "12/40 files" in text
    assert "copy [docs]" in text  # a name with brackets is shown as written, not read as markup
    assert "150994944" not in text
