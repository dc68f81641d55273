"""Draw the migration lifecycle (reshard/control/states.py) as docs/img/lifecycle.svg.

The picture is generated from TRANSITIONS, never drawn by hand, so it cannot disagree with
what ControlStore.set_state allows; tests/unit/test_docs_site.py checks the committed SVG
has every state and transition. Needs Graphviz's `dot` (Debian: graphviz); `make docs`
redraws it when `dot` is there.

    python scripts/lifecycle_diagram.py [--dot]   # --dot prints the Graphviz source only
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from reshard.control.states import TRANSITIONS, State

OUT = Path(__file__).resolve().parents[1] / "docs" / "img" / "lifecycle.svg"
# which command makes each transition (the labels on the arrows)
BY = {
    (State.PLANNED, State.BUILDING): "start", (State.BUILDING, State.STREAMING): "copy done",
    (State.STREAMING, State.SHADOWING): "shadow", (State.SHADOWING, State.STREAMING): "shadow --off",
    (State.BAKING, State.FINALIZING): "complete", (State.FINALIZING, State.COMPLETE): "",
    (State.BAKING, State.SWITCHING): "rollback", (State.SWITCHING, State.BAKING): "last wave cut over",
    (State.SWITCHING, State.ROLLED_BACK): "rolled back", (State.SWITCHING, State.STREAMING): "canary wave or backed out",
}
TERMINAL = {State.COMPLETE, State.ABORTED}


def dot_source() -> str:
    lines = ["digraph lifecycle {", '  rankdir=LR; node [shape=box, style="rounded,filled", fillcolor="#eef3fb", '
             'fontname="Helvetica"]; edge [fontname="Helvetica", fontsize=10];']
    for s in State:
        fill = "#dddddd" if s in TERMINAL else "#ffe9c7" if s == State.SWITCHING else "#eef3fb"
        lines.append(f'  {s.value} [fillcolor="{fill}"];')
    for a, targets in TRANSITIONS.items():
        for b in sorted(targets, key=lambda t: t.value):
            label = BY.get((a, b), "abort" if b == State.ABORTED else "cutover" if b == State.SWITCHING else "")
            style = ', style=dashed, color="#999999"' if b == State.ABORTED else ""
            lines.append(f'  {a.value} -> {b.value} [label="{label}"{style}];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def main() -> None:
    src = dot_source()
    if "--dot" in sys.argv:
        sys.stdout.write(src)
        return
    svg = subprocess.run(["dot", "-Tsvg"], input=src, capture_output=True, text=True, check=True).stdout
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(svg)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
