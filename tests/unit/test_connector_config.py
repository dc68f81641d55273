"""The connector config reshard registers: echo filtering per direction."""

import re
from pathlib import Path

from reshard.cdc_applier.connector import ECHO_PREDICATE, render

from reshard.config import parse_config
from reshard.streams import forward, reverse
from tests.unit.test_config import GOOD


def test_each_direction_drops_the_other_directions_writes_only_when_asked():
    config = parse_config(GOOD)
    fwd, rev = forward("m1", "source1"), reverse("m1", "source1", 1)
    plain = render(config, fwd, ["public.accounts"])
    assert "transforms" not in plain and "predicates" not in plain
    for stream, other in ((fwd, "reshard_rev_m1_"), (rev, "reshard_fwd_m1_")):
        out = render(config, stream, ["public.accounts"], filter_echoes=True)
        assert out["transforms"] == "dropEchoes" and out["transforms.dropEchoes.predicate"] == "isEcho"
        assert out["transforms.dropEchoes.type"] == "org.apache.kafka.connect.transforms.Filter"
        assert out["predicates.isEcho.type"] == ECHO_PREDICATE
        # the trailing underscore keeps migration m1's filter off migration m10's origins
        assert out["predicates.isEcho.prefix"] == other


CONNECTORS = Path(__file__).resolve().parents[2] / "connectors"


def test_the_predicate_class_is_the_one_the_java_module_builds():
    java = CONNECTORS / "echo-filter/src/main/java"
    assert (java / (ECHO_PREDICATE.replace(".", "/") + ".java")).is_file()


def test_the_echo_filter_compiles_against_the_stacks_kafka():
    version = re.compile(r"<kafka.version>([^<]+)</kafka.version>")
    assert version.search((CONNECTORS / "echo-filter/pom.xml").read_text()).group(1) == \
        version.search((CONNECTORS / "pom.xml").read_text()).group(1)
