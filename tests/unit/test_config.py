import pytest

from reshard.config import check_name, parse_config
from reshard.errors import ConfigError

GOOD = {
    "control": {"dsn": "host=127.0.0.1 port=5432 dbname=reshard user=postgres"},
    "clusters": {"source1": {"dsn": "host=127.0.0.1 port=5433 dbname=app", "connect_dsn": "host=pg1 dbname=app"}},
    "kafka": {"bootstrap_servers": "127.0.0.1:9092", "partitions": 8,
              "schema_registry_url": "http://r:8080/apis/ccompat/v7/"},
    "connect": {"url": "http://127.0.0.1:8083/"},
}


def test_parse_roundtrip():
    c = parse_config(GOOD)
    assert c.cluster("source1").dbname == "app"
    assert c.cluster("source1").params(for_connect=True)["host"] == "pg1"
    assert c.connect.url == "http://127.0.0.1:8083"
    assert c.kafka.partitions == 8
    assert parse_config(c.to_dict()).to_dict() == c.to_dict()
    assert c.kafka.format == "avro" and c.kafka.schema_registry_url == "http://r:8080/apis/ccompat/v7"
    assert c.kafka.apicurio_url == "http://r:8080/apis/registry/v3"
    inside = parse_config({**GOOD, "kafka": {**GOOD["kafka"], "connect_schema_registry_url": "http://registry:8080/apis/ccompat/v7"}})
    assert inside.kafka.apicurio_url == "http://registry:8080/apis/registry/v3"
    assert parse_config(inside.to_dict()) == inside
    json_only = parse_config({**GOOD, "kafka": {"bootstrap_servers": "k:9092", "format": "json"}})
    assert json_only.kafka.schema_registry_url is None and "schema_registry_url" not in json_only.to_dict()["kafka"]
    assert parse_config(json_only.to_dict()) == json_only


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d.pop("control"), "missing required key 'control'"),
    (lambda d: d["clusters"]["source1"].update(dsn="host='unclosed"), "invalid DSN"),
    (lambda d: d["clusters"].update({"Bad-Name": {"dsn": "host=x"}}), "cluster name 'Bad-Name' is invalid"),
    (lambda d: d["kafka"].update(partitions=0), "kafka.partitions: Input should be greater than or equal to 1"),
    (lambda d: d["kafka"].update(partitons=8), r"kafka.partitons: unknown key \(did you mean 'partitions'\?\)"),
    (lambda d: d["kafka"].update(partitions="8"), "kafka.partitions: Input should be a valid integer"),
    (lambda d: d.update(stack={}), "stack: unknown key"),
    (lambda d: d["clusters"]["source1"].update(dsnn="x"), r"clusters.source1.dsnn: unknown key \(did you mean 'dsn'"),
    (lambda d: d["connect"].update(echo_filter="yes"), "connect.echo_filter: Input should be a valid boolean"),
    (lambda d: d["connect"].update(url="127.0.0.1:8083"), "must start with http"),
    (lambda d: d["kafka"].update(schema_registry_url="127.0.0.1:8081"), "schema_registry_url: must start with http"),
    (lambda d: d["kafka"].pop("schema_registry_url"), "kafka.format avro .the default. needs kafka.schema_registry_url"),
    (lambda d: d["kafka"].update(format="protobuf"), "kafka.format: Input should be 'avro' or 'json'"),
    (lambda d: d["kafka"].update(schema_registry_url="http://r:8081"), "Confluent-compatible API"),
    (lambda d: d["kafka"].update(client={"sasl.password": "hunter2"}), "kafka.client: sasl.password holds a secret"),
    (lambda d: d["kafka"].update(client={"bootstrap.servers": "x:1"}), r"use kafka.bootstrap_servers"),
    (lambda d: d["kafka"].update(client={"group.id": "g"}), "group.id set by reshard per client"),
    (lambda d: d["kafka"].update(client={"retries": [1]}), "kafka.client.retries"),
    (lambda d: d["connect"].update(password="plain"), "connect.password: String should match pattern"),
    (lambda d: d["connect"].update(password="${env:P}"), "password needs username"),
    (lambda d: d["connect"].update(cert_file="/c.pem"), "cert_file and key_file go together"),
    (lambda d: d["clusters"]["source1"].update(connector={"slot.name": "x", "transforms": "t"}),
     "clusters.source1.connector: slot.name, transforms set by reshard"),
    (lambda d: d["clusters"]["source1"].update(connector={"max.batch.size": 1}), "clusters.source1.connector.max"),
])
def test_bad_config_names_the_key(mutate, message):
    import copy

    d = copy.deepcopy(GOOD)
    mutate(d)
    with pytest.raises(ConfigError, match=message):
        parse_config(d)


def test_unknown_cluster_lists_known_ones():
    with pytest.raises(ConfigError, match="defines: source1"):
        parse_config(GOOD).cluster("nope")


def test_names_fit_slot_names():
    check_name("migration", "a" * 24)
    with pytest.raises(ConfigError):
        check_name("migration", "a" * 25)


def test_client_settings_and_secrets_are_references_resolved_only_when_asked(tmp_path, monkeypatch):
    import copy

    secrets = tmp_path / "kafka.properties"
    secrets.write_text("# comment\nreshard.password = s3cr\\\\et\n")
    d = copy.deepcopy(GOOD)
    d["kafka"]["client"] = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-256",
                            "sasl.username": "reshard", "sasl.password": f"${{file:{secrets}:reshard.password}}",
                            "enable.ssl.certificate.verification": True, "socket.timeout.ms": 5000}
    d["connect"].update(username="admin", password="${env:CONNECT_PW}")
    d["clusters"]["source1"]["connector"] = {"database.tcpKeepAlive": "true"}
    c = parse_config(d)
    assert c.kafka.client["enable.ssl.certificate.verification"] == "true"
    assert c.kafka.client["socket.timeout.ms"] == "5000"
    assert c.kafka.client["sasl.password"].startswith("${file:")  # what to_dict and --json show
    assert c.kafka.client_settings()["sasl.password"] == "s3cr\\et"
    assert parse_config(c.to_dict()) == c
    monkeypatch.setenv("CONNECT_PW", "pw")
    assert c.connect.basic_auth() == ("admin", "pw")
    monkeypatch.delenv("CONNECT_PW")
    with pytest.raises(ConfigError, match="connect.password: environment variable CONNECT_PW is not set"):
        c.connect.basic_auth()
    missing = parse_config({**d, "kafka": {**d["kafka"], "client": {"sasl.password": f"${{file:{secrets}:nope}}"}}})
    with pytest.raises(ConfigError, match="kafka.client.sasl.password: .* has no key 'nope'"):
        missing.kafka.client_settings()
