"""The connector config reshard registers: echo filtering per direction."""

import json
import re
from pathlib import Path

from reshard.cdc_applier.connector import ECHO_PREDICATE, render
from reshard.config import parse_config
from reshard.kafka.streams import forward, reverse
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


def _with(**changes):
    import copy

    d = copy.deepcopy(GOOD)
    d["clusters"]["source1"]["connect_dsn"] = changes.pop("connect_dsn", "host=pg1 dbname=app")
    d["clusters"]["source1"].update(changes.pop("cluster", {}))
    d["connect"].update(changes.pop("connect", {}))
    return parse_config(d)


def test_the_connector_config_carries_a_reference_never_the_password(tmp_path):
    import stat

    import pytest

    from reshard.errors import ConfigError
    from reshard.kafka.debezium_login import connect_password

    dsn = "host=pg1 dbname=app user=rs password=s3cr:et sslmode=verify-full sslrootcert=/ca.pem"
    config = _with(connect_dsn=dsn, connect={"secrets_dir": str(tmp_path / "secrets")})
    ref = connect_password(config, "source1")
    path = tmp_path / "secrets" / "source1.properties"
    assert ref == f"${{file:{path}:password}}"
    assert path.read_text() == "password=s3cr:et\n" and stat.S_IMODE(path.stat().st_mode) == 0o600
    out = render(config, forward("m1", "source1"), ["public.accounts"], password=ref)
    assert out["database.password"] == ref and "s3cr" not in json.dumps(out)
    assert out["database.sslmode"] == "verify-full" and out["database.sslrootcert"] == "/ca.pem"
    # the operator's own reference wins; without one and without a secrets_dir: refused, not leaked
    own = _with(connect_dsn=dsn, cluster={"connect_password": "${env:SOURCE1_PGPASSWORD}"})
    assert connect_password(own, "source1") == "${env:SOURCE1_PGPASSWORD}"
    with pytest.raises(ConfigError, match="will not write it into the Debezium connector's config"):
        connect_password(_with(connect_dsn=dsn), "source1")


def test_a_clusters_connector_properties_are_added_to_both_directions():
    config = _with(cluster={"connector": {"database.tcpKeepAlive": "false", "max.batch.size": "4096"}})
    for stream in (forward("m1", "source1"), reverse("m1", "source1", 1)):
        out = render(config, stream, ["public.accounts"], filter_echoes=True)
        assert out["database.tcpKeepAlive"] == "false" and out["max.batch.size"] == "4096"
        assert out["slot.name"] == stream.slot and out["transforms"] == "dropEchoes"
    assert render(_with(), forward("m1", "source1"), ["public.accounts"])["max.batch.size"] == "20480"


def test_avro_uses_reshards_converter_only_where_the_worker_has_it():
    from dataclasses import replace

    from reshard.cdc_applier.connector import AVRO_CONVERTER, REUSING_AVRO_CONVERTER

    config = parse_config(GOOD)
    config = replace(config, kafka=replace(config.kafka, format="avro", schema_registry_url="http://r:8080/apis/ccompat/v7"))
    fwd = forward("m1", "source1")
    for reuse, converter in ((True, REUSING_AVRO_CONVERTER), (False, AVRO_CONVERTER)):
        out = render(config, fwd, ["public.accounts"], reuse_schemas=reuse)
        assert out["key.converter"] == out["value.converter"] == converter
        assert out["value.converter.apicurio.registry.auto-register"] == "true"
    java = CONNECTORS / "apicurio-converter/src/main/java"
    assert (java / (REUSING_AVRO_CONVERTER.replace(".", "/") + ".java")).is_file()
