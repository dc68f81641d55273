"""The published schemas of reshard.yaml and shard maps describe what reshard accepts."""

import copy
import json
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from reshard.file_schemas import DIRECTORY, PUBLISHED, render
from tests.unit.test_config import GOOD

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_schema_is_the_models(name):
    assert (DIRECTORY / name).read_text() == render(PUBLISHED[name]), \
        "a model changed: run `python -m reshard.file_schemas` and commit schemas/files/"


def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads((DIRECTORY / name).read_text()))


def test_the_config_schema_accepts_a_good_file_and_refuses_a_typo():
    v = _validator("reshard.yaml.schema.json")
    assert not list(v.iter_errors(GOOD))
    bad = copy.deepcopy(GOOD)
    bad["kafka"]["partitons"] = 4
    assert any("partitons" in e.message for e in v.iter_errors(bad))


def test_the_map_schema_accepts_every_example_map():
    v = _validator("shard-map.schema.json")
    maps = sorted((REPO / "examples" / "maps").glob("*.yaml"))
    assert maps
    for path in maps:
        assert not list(v.iter_errors(yaml.safe_load(path.read_text()))), path
