"""The service as a container image: build it without a registry, run it, measure it.

    python -m mtdefect.devtools.container build     # what `make container` runs
    python -m mtdefect.devtools.container requirements   # rewrite requirements/serving.txt

Steps (docs/DEPLOY.md explains the settings):

1. **OS image** ``MT_BASE_IMAGE`` (e.g. ``python:3.11-slim-bookworm`` where a registry is reachable); unset:
   ``localhost/mtdefect-os:bookworm``, made once with ``debootstrap --variant=minbase bookworm`` from the
   host's Debian mirror (Python, venv, pip, CA certificates) and ``<engine> import``, so no registry is
   needed.
2. **Base image** ``localhost/mtdefect-base:latest`` (``bentofile.yaml``'s ``docker.base_image``): the OS
   image plus the extra CA certificates of ``MT_CA_CERTS`` (a PEM file or a folder of ``*.crt``; default
   the host's locally added ones, ``/usr/local/share/ca-certificates``) and the settings that make pip and
   uv trust them and reach the package index the way the host does (``MT_PIP_INDEX_URL``, else the host
   pip's ``global.index-url`` when it is an http(s) URL, else PyPI).
3. ``bentoml build`` (the bento: serving code, ``requirements/serving.txt``, the newest stored model) and
   ``bentoml containerize`` with the engine (``MT_CONTAINER_ENGINE``: docker where a daemon answers,
   else podman, else buildah).

The build writes its sizes and times to ``benchmarks/results/container.json``. The service never
imports this module; the tests and the Makefile do.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
BENTOML = str(Path(sys.executable).with_name("bentoml"))
SERVING_REQUIREMENTS = ROOT / "requirements" / "serving.txt"
CONSTRAINTS = ROOT / "requirements" / "constraints.txt"
RESULT = ROOT / "benchmarks" / "results" / "container.json"
CACHE = ROOT / ".cache" / "container"

BENTO_NAME = "magnetic-tile-service"
OS_IMAGE = "localhost/mtdefect-os:bookworm"
BASE_IMAGE = "localhost/mtdefect-base:latest"  # bentofile.yaml's docker.base_image
SUITE = "bookworm"
OS_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
DEFAULT_CA_DIR = Path("/usr/local/share/ca-certificates")  # Debian/Ubuntu: locally added authorities
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # Debian's bundle, inside the image
PORT = 3000  # BentoML's port inside the image

# What the serving code imports from outside the standard library (service.py, mtdefect.inference,
# mtdefect.serving, mtdefect.store), as distribution names. requirements/serving.txt is these and
# everything they depend on, at the versions of requirements/constraints.txt.
SERVING_ROOTS = (
    "bentoml",
    "numpy",
    "pillow",
    "scipy",
    "onnxruntime",
    "anyio",
    "starlette",
    "pydantic",
    "python-multipart",
    "prometheus-client",
    "httptools",  # not imported: uvicorn (BentoML's server) picks them up when installed
    "uvloop",
)
# Imported only by the PyTorch backend (development); the image must not contain them.
DEVELOPMENT_ONLY = ("torch", "torchvision", "safetensors", "segmentation-models-pytorch", "timm")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ---------------------------------------------------------------- requirements/serving.txt


def _constraints() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[_canonical(name)] = version.strip()
    return pins


def serving_closure(roots: Iterable[str] = SERVING_ROOTS) -> list[str]:
    """The distributions the serving roots need (markers evaluated for this interpreter, extras not
    followed), as canonical names, from the installed metadata."""
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = [_canonical(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for spec in metadata.requires(name) or []:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            todo.append(_canonical(req.name))
    return sorted(seen)


def serving_requirements() -> str:
    """requirements/serving.txt's text: the serving closure pinned to requirements/constraints.txt."""
    pins = _constraints()
    names = serving_closure()
    missing = [n for n in names if n not in pins]
    if missing:
        raise SystemExit(f"not in {CONSTRAINTS.name}: {missing} (run `make lock`)")
    lines = [
        "# Generated by `python -m mtdefect.devtools.container requirements` from constraints.txt: what",
        "# the served service imports (mtdefect.devtools.container.SERVING_ROOTS) and their dependencies.",
        "# No PyTorch: the image serves with ONNX Runtime. bentofile.yaml installs exactly this list.",
        *(f"{name}=={pins[name]}" for name in names),
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- engines


@dataclass
class Engine:
    """docker, podman or buildah, with the environment and options that make it work on this host."""

    name: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def cli(self) -> str:
        return "podman" if self.name == "buildah" and shutil.which("podman") else self.name

    def run(self, *args: str, check: bool = True, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
        out = subprocess.run(
            [self.cli, *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kw,
        )
        if check and out.returncode != 0:
            raise RuntimeError(
                f"{self.cli} {' '.join(args[:3])} failed ({out.returncode}): {out.stderr[-3000:]}"
            )
        return out

    def build(self, context: Path, tag: str, timeout: float = 900) -> None:
        if self.name == "buildah":
            args = ["buildah", "bud", "--isolation", "chroot", "-t", tag, str(context)]
        else:
            args = [self.name, "build", "-t", tag, str(context)]
        out = subprocess.run(
            args, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=timeout
        )
        if out.returncode != 0:
            raise RuntimeError(f"building {tag} failed: {out.stdout[-2000:]}{out.stderr[-3000:]}")

    def exists(self, image: str) -> bool:
        if self.name == "buildah" and self.cli == "buildah":
            return self.run("inspect", "--type", "image", image, check=False).returncode == 0
        return self.run("image", "inspect", image, check=False).returncode == 0

    def size(self, image: str) -> int:
        return int(self.run("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())

    def containerize_options(self) -> list[str]:
        if self.name == "buildah":
            return ["--backend", "buildah", "--opt", "isolation=chroot"]
        return ["--backend", self.name]

    def version(self) -> str:
        return self.run("--version", check=False).stdout.strip()


def podman_conf(path: Path) -> Path:
    """A containers.conf for podman/buildah: runc, and nofile/nproc limits within this host's hard
    limits (podman's defaults exceed them on some machines and then no container starts)."""
    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 65536)
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 32768)
    lines = ["[containers]", f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]']
    if shutil.which("runc"):
        lines += ["", "[engine]", 'runtime = "runc"']
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def docker_daemon() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def find_engine(name: str | None = None) -> Engine:
    """``name`` or ``MT_CONTAINER_ENGINE``; else docker where its daemon answers, else podman, else
    buildah."""
    name = name or os.environ.get("MT_CONTAINER_ENGINE") or None
    if name is None:
        if docker_daemon():
            name = "docker"
        elif shutil.which("podman"):
            name = "podman"
        elif shutil.which("buildah"):
            name = "buildah"
        else:
            raise RuntimeError("no container engine: install podman (apt-get install podman runc) or docker")
    if name not in ("docker", "podman", "buildah"):
        raise ValueError(f"MT_CONTAINER_ENGINE={name!r}: choose docker, podman or buildah")
    if not shutil.which(name):
        raise RuntimeError(f"{name} is not installed")
    env = {}
    if name in ("podman", "buildah") and "CONTAINERS_CONF" not in os.environ:
        env["CONTAINERS_CONF"] = str(podman_conf(CACHE / "containers.conf"))
    return Engine(name, env)


# ---------------------------------------------------------------- the base image


def debian_mirror() -> str:
    """``MT_DEBIAN_MIRROR``, else the first Debian archive this host's apt uses (no default: a host
    without one must say where its Debian packages come from)."""
    if os.environ.get("MT_DEBIAN_MIRROR"):
        return os.environ["MT_DEBIAN_MIRROR"]
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        for match in re.finditer(r"(?:^URIs:\s*|^deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", text, re.MULTILINE):
            uri = match.group(1)
            if not uri.rstrip("/").endswith("-security") and uri.startswith(("http://", "https://")):
                return uri
    raise RuntimeError("no Debian archive in this host's apt sources: set MT_DEBIAN_MIRROR to one")


def build_os_image(engine: Engine, image: str = OS_IMAGE) -> dict:
    """debootstrap a minimal Debian with Python into a temporary folder and import it as ``image``."""
    if not shutil.which("debootstrap"):
        raise RuntimeError("debootstrap is not installed (apt-get install debootstrap), or set MT_BASE_IMAGE")
    if os.geteuid() != 0:
        raise RuntimeError(
            "debootstrap needs root; run as root or set MT_BASE_IMAGE to an image with Python 3.11"
        )
    started = time.monotonic()
    mirror = debian_mirror()
    with tempfile.TemporaryDirectory(
        prefix="mtdefect-rootfs-", dir=CACHE.parent if CACHE.parent.exists() else None
    ) as tmp:
        rootfs = Path(tmp) / "rootfs"
        out = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(OS_PACKAGES)}",
                SUITE,
                str(rootfs),
                mirror,
            ],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if out.returncode != 0:
            raise RuntimeError(f"debootstrap failed: {out.stdout[-2000:]}{out.stderr[-2000:]}")
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):  # package downloads and indexes
            for item in (rootfs / junk).glob("*"):
                if item.is_file():
                    item.unlink()
        tar = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tar), "."], check=True, timeout=600)
        engine.run("import", str(tar), image, timeout=600)
    source = "MT_DEBIAN_MIRROR" if os.environ.get("MT_DEBIAN_MIRROR") else "the host's apt sources"
    return {"image": image, "mirror": source, "seconds": round(time.monotonic() - started, 1)}


def ca_certificates(setting: str | None = None) -> list[Path]:
    """The extra CA certificates for the image: ``MT_CA_CERTS`` (a PEM file or a folder of ``*.crt``;
    empty: none), by default those added to this host (``/usr/local/share/ca-certificates``)."""
    if setting is None:
        setting = os.environ.get("MT_CA_CERTS", str(DEFAULT_CA_DIR))
    if not setting:
        return []
    path = Path(setting)
    if path.is_dir():
        return sorted(p for p in path.rglob("*.crt") if p.is_file())
    if path.is_file():
        return [path]
    if setting != str(DEFAULT_CA_DIR):
        raise FileNotFoundError(f"MT_CA_CERTS={setting}: no such file or folder")
    return []


def pip_index_url() -> str | None:
    """``MT_PIP_INDEX_URL``, else the host pip's index (env or config) when it is an http(s) URL."""
    url = os.environ.get("MT_PIP_INDEX_URL") or os.environ.get("PIP_INDEX_URL")
    if not url:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "config", "get", "global.index-url"], capture_output=True, text=True
        )
        url = out.stdout.strip() if out.returncode == 0 else ""
    return url if url.startswith(("http://", "https://")) else None


def base_containerfile(os_image: str, certs: Sequence[Path], index_url: str | None) -> str:
    lines = [f"FROM {os_image}"]
    if certs:
        lines += ["COPY ca/ /usr/local/share/ca-certificates/mtdefect/", "RUN update-ca-certificates"]
    env = {
        # pip (installs uv) and uv (installs the bento's packages) trust the system bundle, which now
        # holds the extra authorities; Debian's pip refuses to touch the system Python without the flag
        "SSL_CERT_FILE": CA_BUNDLE,
        "PIP_CERT": CA_BUNDLE,
        "REQUESTS_CA_BUNDLE": CA_BUNDLE,
        "PIP_BREAK_SYSTEM_PACKAGES": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    if index_url:
        env.update(PIP_INDEX_URL=index_url, UV_DEFAULT_INDEX=index_url)
    lines += [f"ENV {key}={json.dumps(value)}" for key, value in env.items()]
    return "\n".join(lines) + "\n"


def build_base_image(engine: Engine, os_image: str, image: str = BASE_IMAGE) -> dict:
    started = time.monotonic()
    certs = ca_certificates()
    with tempfile.TemporaryDirectory(prefix="mtdefect-base-") as tmp:
        context = Path(tmp)
        (context / "ca").mkdir()
        for i, cert in enumerate(certs):
            shutil.copyfile(cert, context / "ca" / f"{i:02d}-{cert.stem}.crt")
        (context / "Containerfile").write_text(base_containerfile(os_image, certs, pip_index_url()))
        shutil.copyfile(context / "Containerfile", context / "Dockerfile")
        engine.build(context, image)
    return {"image": image, "ca_certificates": len(certs), "seconds": round(time.monotonic() - started, 1)}


def ensure_base_image(engine: Engine, rebuild: bool = False) -> dict:
    """The base image bentofile.yaml names, built from ``MT_BASE_IMAGE`` or a debootstrapped Debian."""
    record: dict = {}
    os_image = os.environ.get("MT_BASE_IMAGE") or OS_IMAGE
    if os_image == OS_IMAGE and (rebuild or not engine.exists(OS_IMAGE)):
        record["os"] = build_os_image(engine)
    else:
        record["os"] = {"image": os_image, "seconds": 0.0, "reused": True}
    record["base"] = build_base_image(engine, os_image)
    return record


# ---------------------------------------------------------------- bento and image


def build_bento(env: Mapping[str, str] | None = None) -> str:
    """``bentoml build`` in the project folder (the model store of ``BENTOML_HOME``); returns the tag."""
    out = subprocess.run(
        [BENTOML, "build", "--output", "tag"],
        cwd=ROOT,
        env=dict(env or os.environ),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"bentoml build failed: {out.stdout[-2000:]}{out.stderr[-3000:]}")
    return out.stdout.strip().splitlines()[-1].removeprefix("__tag__:")


def containerize(engine: Engine, bento_tag: str, image: str, env: Mapping[str, str] | None = None) -> None:
    """``bentoml containerize``. It copies the bento into a temporary folder and reads the Dockerfile
    template from there, refusing files outside its working directory: so both are one private folder."""
    with tempfile.TemporaryDirectory(prefix="mtdefect-containerize-") as tmp:
        tmp = str(Path(tmp).resolve())
        out = subprocess.run(
            [BENTOML, "containerize", bento_tag, "-t", image, *engine.containerize_options()],
            cwd=tmp,
            env={**dict(env or os.environ), **engine.env, "TMPDIR": tmp},
            capture_output=True,
            text=True,
            timeout=900,
        )
    if out.returncode != 0:
        raise RuntimeError(f"bentoml containerize failed: {out.stdout[-3000:]}{out.stderr[-3000:]}")


def image_has(engine: Engine, image: str, module: str) -> bool:
    """Whether ``module`` is importable by the image's Python (the bento's venv)."""
    code = f"import importlib.util,sys; sys.exit(0 if importlib.util.find_spec({module!r}) else 3)"
    out = engine.run(
        "run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c", code, check=False
    )
    if out.returncode not in (0, 3):
        raise RuntimeError(f"python in {image} failed: {out.stderr[-2000:]}")
    return out.returncode == 0


def run_args(
    image: str, host_port: int, env: Mapping[str, str] | None = None, name: str | None = None
) -> list[str]:
    """``run`` arguments as docs/DEPLOY.md recommends: the port on loopback only, read-only root file
    system with a private /tmp (BentoML's home in this image), the image's non-root user, no extra
    privileges."""
    args = ["run", "-d", "--read-only", "--tmpfs", "/tmp:mode=1777", "--security-opt", "no-new-privileges"]
    args += ["--cap-drop", "ALL", "-p", f"127.0.0.1:{host_port}:{PORT}"]
    if name:
        args += ["--name", name]
    for key, value in (env or {}).items():
        args += ["-e", f"{key}={value}"]
    return [*args, image]


def build(
    image: str | None = None,
    engine_name: str | None = None,
    rebuild_base: bool = False,
    bento: str | None = None,
) -> dict:
    """The whole build (`make container`): base image, bento (``bento``: an existing one instead),
    image; returns the record."""
    engine = find_engine(engine_name)
    started = time.monotonic()
    record: dict = {"engine": engine.name, "engine_version": engine.version()}
    record.update(ensure_base_image(engine, rebuild=rebuild_base))
    t0 = time.monotonic()
    tag = bento or build_bento()
    record["bento"] = {"tag": tag, "seconds": round(time.monotonic() - t0, 1), "built": bento is None}
    image = image or f"{BENTO_NAME}:{tag.split(':')[1]}"
    t0 = time.monotonic()
    containerize(engine, tag, image)
    record["containerize"] = {"image": image, "seconds": round(time.monotonic() - t0, 1)}
    record["image_bytes"] = engine.size(image)
    record["torch_in_image"] = image_has(engine, image, "torch")
    record["total_seconds"] = round(time.monotonic() - started, 1)
    return record


def bento_models(bento_tag: str) -> list[dict]:
    """The models a built bento names (copied into the image by ``bentoml containerize``): tag and
    bytes in the store of BENTOML_HOME."""
    import yaml

    home = Path(os.environ.get("BENTOML_HOME", Path.home() / "bentoml"))
    name, version = bento_tag.split(":")
    info = yaml.safe_load((home / "bentos" / name / version / "bento.yaml").read_text())
    found = []
    for model in info.get("models") or []:
        folder = home / "models" / Path(*model["tag"].split(":"))
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        found.append({"tag": model["tag"], "bytes": size, "files": sorted(f.name for f in folder.iterdir())})
    return found


def write_result(record: dict, path: Path = RESULT) -> Path:
    record = {
        "what": "make container: base image, bentoml build, bentoml containerize; image size",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load": os.getloadavg()},
        **record,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mtdefect.devtools.container", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="base image + bento + image (make container)")
    b.add_argument("--image", help="image name (default magnetic-tile-service:<bento version>)")
    b.add_argument("--engine", choices=("docker", "podman", "buildah"))
    b.add_argument("--rebuild-base", action="store_true", help="debootstrap the OS image again")
    b.add_argument("--bento", help="containerize this bento tag instead of building one")
    b.add_argument("--result", type=Path, default=RESULT)
    r = sub.add_parser(
        "requirements", help="rewrite requirements/serving.txt from requirements/constraints.txt"
    )
    r.add_argument("--check", action="store_true", help="fail when the file is out of date")
    args = parser.parse_args(argv)
    if args.command == "requirements":
        text = serving_requirements()
        if args.check:
            return 0 if SERVING_REQUIREMENTS.read_text() == text else 1
        SERVING_REQUIREMENTS.write_text(text)
        print(f"wrote {SERVING_REQUIREMENTS.relative_to(ROOT)}")
        return 0
    try:
        record = build(args.image, args.engine, args.rebuild_base, args.bento)
    except (RuntimeError, FileNotFoundError, ValueError) as exc:
        message = str(exc)
        if "could not be found" in message:
            home = os.environ.get("BENTOML_HOME", "~/bentoml")
            message += f"\n(no model in the store of BENTOML_HOME={home}: `make run`, or `dvc repro package`)"
        print(f"container build failed: {message}", file=sys.stderr)
        return 1
    record["models"] = bento_models(record["bento"]["tag"])
    print(f"wrote {write_result(record, args.result)}")
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
