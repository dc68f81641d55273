"""The code base's shape, for the redesign's before/after (issue 24): module sizes, long
functions, what importing the router loads, f-string SQL, hand-written retry loops, urllib.

    python scripts/shape.py [TREE]     (TREE: a checkout, default this one)
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

SQL_FSTRING = re.compile(r"""f["'][^"']*\b(SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|COPY|LOCK|TRUNCATE|ANALYZE|LISTEN|SET)\b""")
NOT_SQL = re.compile(r"raise |Error\(|log\.\w+\(|say\(|\.step\(|help=|description=|message=")


def sources(tree: Path) -> list[Path]:
    return sorted(p for d in ("reshard", "snapshotter", "cdc_applier", "cutover") for p in (tree / d).rglob("*.py"))


def sleeps_in_loop(fn: ast.AST) -> bool:
    for loop in (n for n in ast.walk(fn) if isinstance(n, (ast.While, ast.For))):
        for call in (n for n in ast.walk(loop) if isinstance(n, ast.Call)):
            f = call.func
            if isinstance(f, ast.Attribute) and f.attr == "sleep":
                return True
    return False


def shape(tree: Path) -> dict:
    files = sources(tree)
    sizes = {str(p.relative_to(tree)): len(p.read_text().splitlines()) for p in files}
    functions, loops, fsql, urllib = [], [], 0, []
    for p in files:
        text = p.read_text()
        mod = ast.parse(text)
        for node in ast.walk(mod):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append((node.end_lineno - node.lineno + 1, f"{p.relative_to(tree)}:{node.name}"))
                if sleeps_in_loop(node) and not any(isinstance(c, (ast.FunctionDef, ast.AsyncFunctionDef))
                                                    and c is not node and sleeps_in_loop(c) for c in ast.walk(node)):
                    loops.append(f"{p.relative_to(tree)}:{node.name}")
        fsql += sum(1 for line in text.splitlines() if SQL_FSTRING.search(line) and not NOT_SQL.search(line))
        if "urllib.request" in text:
            urllib.append(str(p.relative_to(tree)))
    functions.sort(reverse=True)
    loaded = subprocess.run(
        [sys.executable, "-c", "import json, sys; import reshard.router; "
         "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('reshard', 'click'))))"],
        capture_output=True, text=True, cwd=tree, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"})
    router = json.loads(loaded.stdout) if loaded.returncode == 0 else [f"error: {loaded.stderr.strip()[-200:]}"]
    return {
        "modules": len(files),
        "modules over 500 lines": {k: v for k, v in sorted(sizes.items(), key=lambda kv: -kv[1]) if v > 500},
        "functions over 60 lines": len([f for f in functions if f[0] > 60]),
        "longest functions": [f"{name} {n}" for n, name in functions[:8]],
        "modules loaded by `import reshard.router`": len(router),
        "click loaded by the router": "click" in router,
        "f-string SQL lines": fsql,
        "functions with a hand-written sleep loop": len(loops),
        "sleep loops": loops,
        "modules using urllib": urllib,
    }


if __name__ == "__main__":
    print(json.dumps(shape(Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()), indent=2))
