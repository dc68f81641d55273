"""The docs are a site people can use: it builds strictly (a broken link or anchor fails),
the lifecycle picture has every state and transition states.py allows, and every link in
the README reaches a file (and a heading, when it names one)."""

import html
import re
import subprocess
import sys
from pathlib import Path

from reshard.control.states import TRANSITIONS

REPO = Path(__file__).resolve().parents[1].parent


def test_the_site_builds_strictly(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "site" / "runbook" / "index.html").is_file()
    assert (tmp_path / "site" / "img" / "lifecycle.svg").is_file()


def test_the_lifecycle_picture_is_states_py():
    titles = {html.unescape(t) for t in re.findall(r"<title>([^<]*)</title>", (REPO / "docs/img/lifecycle.svg").read_text())}
    for state, targets in TRANSITIONS.items():
        assert state.value in titles, f"{state} is not drawn: rerun scripts/lifecycle_diagram.py"
        for t in targets:
            assert f"{state.value}->{t.value}" in titles, f"{state}->{t} is not drawn: rerun scripts/lifecycle_diagram.py"
    drawn = {t for t in titles if "->" in t}
    assert len(drawn) == sum(len(t) for t in TRANSITIONS.values()), "a transition is drawn that states.py does not allow"


def _anchors(page: Path) -> set[str]:
    return {re.sub(r"\s+", "-", re.sub(r"[^\w\- ]", "", h.strip().lower()))
            for h in re.findall(r"^#+ (.+)$", page.read_text(), re.M)}


def test_readme_links_reach_the_docs():
    links = re.findall(r"\]\(([^)#]+)(?:#([^)]+))?\)", (REPO / "README.md").read_text())
    assert len(links) >= 15
    for path, anchor in links:
        target = REPO / path
        assert target.exists(), path
        if anchor:
            assert anchor in _anchors(target), f"{path}#{anchor}"
