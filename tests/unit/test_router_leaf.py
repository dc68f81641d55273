"""What an application embeds stays small: importing the router loads no CLI, no click and
no coordinator (checked in a fresh interpreter, as an application would import it)."""

import json
import subprocess
import sys


def _loaded_by(*modules: str) -> set[str]:
    """The click and reshard modules a fresh interpreter holds after importing ``modules``."""
    code = (f"import json, sys; import {', '.join(modules)}; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('click', 'reshard'))))")
    return set(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                         check=True).stdout))


def test_importing_the_router_loads_no_cli_click_or_coordinator():
    loaded = _loaded_by("reshard.router")
    assert not {"click", "reshard.cli", "reshard.coordinator", "reshard.cutover"} & loaded, sorted(loaded)


def test_a_shadow_reads_catch_up_proof_loads_no_cli_click_or_coordinator():
    loaded = _loaded_by("reshard.router", "reshard.proof.catchup")
    assert not {"click", "reshard.cli", "reshard.coordinator", "reshard.cdc_applier"} & loaded, sorted(loaded)


def test_only_the_cli_and_the_coordinator_import_the_stage_packages():
    """reshard/__init__.py's rule: the stages depend on the kernel, never the reverse,
    except through the CLI and the coordinator (function-level imports count too)."""
    import ast
    from pathlib import Path

    kernel = Path(__file__).resolve().parents[2] / "reshard"
    stages = ("reshard.cdc_applier", "reshard.snapshotter", "reshard.cutover")
    wrong = []
    for path in kernel.rglob("*.py"):
        if path.name == "coordinator.py" or path.parent.name == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            wrong += [f"{path.relative_to(kernel.parent)}: {n}" for n in names if n.startswith(stages)]
    assert not wrong, wrong
