"""The Python code blocks that README and docs/ mark for the tests to run as printed."""

import re
from pathlib import Path


def python_block(path: Path, marker: str) -> str:
    """The ```python block between ``<!-- marker ... -->`` and ``<!-- /marker -->``."""
    pattern = rf"<!-- {marker}.*?-->\n```python\n(.*?)```\n<!-- /{marker}"
    match = re.search(pattern, path.read_text(), re.S)
    assert match, f"{path.name} has no {marker} block"
    return match.group(1)
