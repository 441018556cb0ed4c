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


DOCS = e2e.REPO / "docs"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {_anchor(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def test_the_readme_links_every_docs_page():
    """The README is the front door: one line of its list names each page under docs/."""
    readme = (e2e.REPO / "README.md").read_text(encoding="utf-8")
    listed = re.findall(r"^- \[docs/([\w.-]+\.md)\]\(docs/\1\): \S", readme, flags=re.M)
    assert sorted(listed) == sorted(p.name for p in DOCS.glob("*.md")), listed


def test_relative_links_of_the_readme_and_docs_resolve():
    """Every link to a file of the checkout (and to a heading in it) from the README and docs/*.md
    lands, so text moved between pages leaves no dangling reference."""
    broken = []
    for page in [e2e.REPO / "README.md", *sorted(DOCS.glob("*.md"))]:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):  # http(s), mailto
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists() or (anchor and anchor not in _anchors(linked)):
                broken.append(f"{page.name}: {target}")
    assert not broken, broken


def test_the_anchor_rule():
    assert _anchor("On 4 GPUs") == "on-4-gpus"
    assert _anchor("Generation quality: IS, IC-LPIPS and KID") == "generation-quality-is-ic-lpips-and-kid"
    assert _anchor("Real-IAD (`data_layout: realiad`)") == "real-iad-data_layout-realiad"
