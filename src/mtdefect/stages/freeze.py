"""Stage: write the exact installed package list (always runs; downstream reruns only if it changed)."""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from pathlib import Path

from mtdefect.fileio import write_text_atomic

OUTPUT = Path("reports/environment.txt")


def installed_packages() -> list[str]:
    names = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() != "mtdefect":
            names[name.lower()] = f"{name}=={dist.version}"
    return [names[k] for k in sorted(names)]


def main(output: Path = OUTPUT) -> None:
    lines = [f"# python {platform.python_version()} ({sys.implementation.name})", *installed_packages()]
    write_text_atomic(output, "\n".join(lines) + "\n")
    print(f"freeze: {len(lines) - 1} packages → {output}")


if __name__ == "__main__":
    main()
