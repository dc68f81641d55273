"""Invariants are numbered once (docs/invariants.md); every "invariant N" cited in the
code or the tests names one that exists there."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_cited_invariant_is_numbered_in_docs():
    numbered = {int(n) for n in re.findall(r"^(\d+)\. \*\*", (ROOT / "docs/invariants.md").read_text(), re.M)}
    assert numbered == set(range(1, len(numbered) + 1)), numbered
    cited = {}
    for folder in ("reshard", "snapshotter", "cdc_applier", "cutover", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            for n in re.findall(r"\binvariants? (\d+)", path.read_text()):
                cited.setdefault(int(n), []).append(str(path.relative_to(ROOT)))
    assert cited, "no citations found: the pattern is wrong"
    assert set(cited) <= numbered, {n: p for n, p in cited.items() if n not in numbered}
