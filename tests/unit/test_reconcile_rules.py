"""The --reconcile file: strict, every error names the file and the path in it."""

import pytest
import yaml

from reshard.errors import ConfigError
from reshard.proof.reconcile import load_rules


def _write(tmp_path, doc):
    p = tmp_path / "checks.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def test_a_valid_file_gives_its_checks(tmp_path):
    rules = load_rules(_write(tmp_path, {"checks": [
        {"name": "ledger", "table": "public.ledger", "aggregates": ["sum(amount)", "count(*)"],
         "group_by": ["currency"]}]}))
    assert rules == [{"name": "ledger", "table": "public.ledger", "aggregates": ["sum(amount)", "count(*)"],
                      "group_by": ["currency"]}]


@pytest.mark.parametrize("doc,message", [
    ({"checks": []}, "checks: List should have at least 1 item"),
    ({"check": [{}]}, "check: unknown key"),
    ({"checks": [{"name": "a", "table": "ledger", "aggregates": ["count(*)"]}]}, r"checks\[0\].table: String should match"),
    ({"checks": [{"name": "a", "table": "public.l", "aggregates": []}]}, r"checks\[0\].aggregates: List should have"),
    ({"checks": [{"name": "a b", "table": "public.l", "aggregates": ["count(*)"]}]}, r"checks\[0\].name"),
    ({"checks": [{"name": "a", "table": "public.l", "aggregates": ["count(*)"], "group_by": ["x; drop"]}]},
     r"checks\[0\].group_by\[0\]"),
    ({"checks": [{"name": "a", "table": "public.l", "aggregates": ["count(*)"]}] * 2}, "duplicate name.s. a"),
])
def test_bad_files_are_refused_naming_the_place(tmp_path, doc, message):
    with pytest.raises(ConfigError, match=message):
        load_rules(_write(tmp_path, doc))


def test_unreadable_or_not_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_rules(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("checks: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_rules(bad)
