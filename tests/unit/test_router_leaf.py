"""What an application embeds stays small: importing the router loads no CLI, no click and
no coordinator (checked in a fresh interpreter, as an application would import it)."""

import json
import subprocess
import sys


def test_importing_the_router_loads_no_cli_click_or_coordinator():
    code = ("import json, sys; import reshard.router; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('click', 'reshard'))))")
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                           check=True).stdout))
    assert not {"click", "reshard.cli", "reshard.coordinator", "reshard.cutover"} & loaded, sorted(loaded)
