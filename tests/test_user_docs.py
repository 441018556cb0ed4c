"""What a user reads never points at the developers' reference folder: a user's clone has no ``shared/``."""

import re
import subprocess

from tests import e2e


def test_no_tracked_file_points_at_the_shared_folder():
    files = subprocess.run(["git", "ls-files"], cwd=e2e.REPO, capture_output=True, text=True, check=True).stdout
    pattern = re.compile(r"(\.\./shared/|shared/reference)")
    offenders = []
    for name in files.split():
        if name == "tests/test_user_docs.py":
            continue
        path = e2e.REPO / name
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        offenders += [f"{name}:{i}" for i, line in enumerate(text.splitlines(), 1) if pattern.search(line)]
    assert not offenders, f"these lines point at ../shared, which users do not have: {offenders}"
