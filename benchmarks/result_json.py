"""Reading the benchmarks' JSON files (results and run reports) with errors that name the file,
and writing a script's result."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def read_json(path: Path, fix: str) -> dict:
    """``path``'s JSON object; a file that is not one stops the script with a message naming
    the file, what is wrong and ``fix`` (what the user can do), not a bare decoder traceback."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SystemExit(f"{path}: unreadable ({exc}); {fix}") from None
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: holds a JSON {type(data).__name__}, not an object; {fix}")
    return data


def restore_fix(path: Path) -> str:
    """What a user can do about a broken results file ``path``."""
    return f"restore it with `git checkout -- {path}`, or delete it to make it again"


def read_result(path: Path) -> dict:
    """A committed results file (``benchmarks/results/accuracy_*.json``), its ``rows`` checked."""
    fix = restore_fix(path)
    data = read_json(path, fix)
    if not isinstance(data.get("rows"), list):
        raise SystemExit(f"{path}: has no list of 'rows'; {fix}")
    return data


def most_seeded_rows(paths: list[Path]) -> dict[tuple[str, str, str], dict]:
    """The rows of the results files ``paths``, once per (model, setting, method): the one with
    most seeds (the first read among equals)."""
    rows: dict[tuple[str, str, str], dict] = {}
    for path in paths:
        for row in read_result(path)["rows"]:
            key = (row["model"], row["setting"], row["method"])
            if key not in rows or len(row["seeds"]) > len(rows[key]["seeds"]):
                rows[key] = row
    return rows


def script_command(script: str, argv: list[str] | None) -> str:
    """The command line that wrote a result: ``python benchmarks/<script>`` and its arguments
    (``argv``, else the process's own)."""
    return " ".join([f"python benchmarks/{script}", *(sys.argv[1:] if argv is None else argv)])


def read_earlier(path: Path) -> dict:
    """The result at ``path`` that a script adds its rows to: ``{}`` where there is none yet."""
    return read_json(path, restore_fix(path)) if path.is_file() else {}


def commands_with(earlier: dict, command: str) -> list[str]:
    """The commands that wrote ``earlier`` (a result kept across commands; older files name
    one ``command``), then ``command``, each once."""
    commands = earlier.get("commands", [earlier["command"]] if "command" in earlier else [])
    return [*(c for c in commands if c != command), command]


def write_result(path: Path, result: dict) -> Path:
    """Write a benchmark's result JSON to ``path`` (its folder made as needed) and say so on
    stderr."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    return path
