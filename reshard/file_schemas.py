"""The JSON Schemas of reshard's input files, generated from the models that validate
them, published in schemas/files/ for editors (YAML language servers complete and check
keys with them: ``# yaml-language-server: $schema=…/reshard.yaml.schema.json``).

``python -m reshard.file_schemas`` rewrites them; a unit test fails when a model changed
and the published schema did not.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from pydantic import BaseModel

from reshard.config import ConfigFile
from reshard.maps.shardmap_file import MapFile

# schemas/files in the repository (an editable install's package data is the checkout itself)
DIRECTORY = Path(str(resources.files("reshard.schemas") / "files"))
PUBLISHED: dict[str, type[BaseModel]] = {
    "reshard.yaml.schema.json": ConfigFile,
    "shard-map.schema.json": MapFile,
}


def render(model: type[BaseModel]) -> str:
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **model.model_json_schema(by_alias=True)}
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main() -> None:
    DIRECTORY.mkdir(parents=True, exist_ok=True)
    for name, model in PUBLISHED.items():
        (DIRECTORY / name).write_text(render(model))
        print(DIRECTORY / name)


if __name__ == "__main__":
    main()
