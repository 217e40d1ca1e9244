"""Stage: write the exact installed package list (always runs; downstream reruns only if it changed)."""
from __future__ import annotations

import os
import platform
import sys
import tempfile
from importlib import metadata
from pathlib import Path

OUTPUT = Path("reports/environment.txt")


def installed_packages() -> list[str]:
    names = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() != "mtdefect":
            names[name.lower()] = f"{name}=={dist.version}"
    return [names[k] for k in sorted(names)]


def main(output: Path = OUTPUT) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# python {platform.python_version()} ({sys.implementation.name})", *installed_packages()]
    fd, tmp = tempfile.mkstemp(prefix=".environment.", dir=output.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    os.replace(tmp, output)
    print(f"freeze: {len(lines) - 1} packages → {output}")


if __name__ == "__main__":
    main()
