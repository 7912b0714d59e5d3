"""The nodes' Python packages, installed with no internet: an exact lock and a wheelhouse.

    pyproject.toml --make lock--> bootstrap/nodes.lock --make wheelhouse--> build/wheelhouse-<hash>/
        --staging--> s3://<bucket>/<prefix>/wheelhouse/<hash>/ --bootstrap--> /opt/llm-decoder/venv

`nodes.lock` (committed) pins every package the EMR nodes install, dependencies included, with its
sha256, resolved for the cluster's platform (CPython 3.11, manylinux x86_64, CPU torch). The
wheelhouse holds exactly those wheels; it is built once per lock (its folder and S3 key carry the
lock's hash), staged once per bucket and reused by every later run. The bootstrap action copies it
from S3 (the S3 gateway endpoint is all a private subnet needs) and runs
`pip install --no-index --find-links <copy> --require-hashes -r nodes.lock`.

Graviton (aarch64) instance types would need a lock and wheelhouse of their own (`--arch aarch64`
resolves one); no run stages or installs it yet, and it is untested: PyTorch's aarch64 CPU wheel
(download.pytorch.org) was not reachable where this was built.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from urllib.parse import urlparse

from llm_decoder_airflow.files import FileStore, is_s3, join, split_s3
from llm_decoder_airflow.settings import PROJECT_ROOT
from spark_jobs.common.errors import InputError

log = logging.getLogger(__name__)

LOCK_PATH = Path(__file__).parent / "bootstrap" / "nodes.lock"
BUILD_DIR = PROJECT_ROOT / "build"
# Written last, in the local folder and in S3: a wheelhouse without it is incomplete.
MANIFEST = "MANIFEST.json"
LOCK_NAME = "nodes.lock"
PYTHON_VERSION = "3.11"
# EMR 7.x runs Amazon Linux 2023 (glibc 2.34): every manylinux tag up to 2.34 installs there.
GLIBC_MAX = 34
ARCHES = ("x86_64", "aarch64")
# EMR provides Spark (and its pyspark) itself; installing another would shadow it.
PROVIDED_BY_EMR = {"pyspark"}
# PyPI's linux torch is the CUDA build (several GB of nvidia-* wheels); the nodes run CPU torch.
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
DISTRIBUTION = "llm-decoder"
# The bootstrap runs pip from its wheel in the wheelhouse (`python pip-*.whl/pip install ...`):
# the nodes' pip is locked too, and the venv needs no ensurepip (seconds of CPU per node).
NODE_TOOLS = ("pip",)


def requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower()


def runtime_requirements() -> list[str]:
    """The project's runtime dependencies from pyproject.toml (or, in an image without the source
    tree, the installed distribution's metadata), minus what EMR provides."""
    pyproject = PROJECT_ROOT / "pyproject.toml"
    if pyproject.is_file():
        requirements = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]
    else:
        try:
            requires = importlib.metadata.requires(DISTRIBUTION) or []
        except importlib.metadata.PackageNotFoundError:
            raise InputError(
                f"neither {pyproject} nor an installed {DISTRIBUTION} says what the nodes need"
            ) from None
        requirements = [r for r in requires if "extra ==" not in r]
    return [r.split(";")[0].strip() for r in requirements if requirement_name(r) not in PROVIDED_BY_EMR]


def node_requirements() -> list[str]:
    """What the lock is resolved from: the runtime requirements with torch's CPU build
    (`torch==2.13.0` → `torch==2.13.0+cpu`: PyPI's torch pulls CUDA on x86_64 and aarch64 alike)."""
    pinned = []
    for requirement in runtime_requirements():
        if requirement_name(requirement) == "torch" and "+" not in requirement:
            if "==" not in requirement:
                raise InputError(
                    f"pyproject.toml: torch must be pinned with == for the nodes' lock, got {requirement!r}"
                )
            requirement += "+cpu"
        pinned.append(requirement)
    return pinned + list(NODE_TOOLS)


def platform_args(arch: str) -> list[str]:
    """pip's target-platform options: CPython 3.11 wheels for manylinux on `arch` (no sdists)."""
    if arch not in ARCHES:
        raise InputError(f"wheelhouse: arch must be one of {', '.join(ARCHES)}, got {arch!r}")
    # pip does not widen --platform to older manylinux versions: list each one.
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(GLIBC_MAX, 16, -1)]
    tags += [f"manylinux2014_{arch}"]
    if arch == "x86_64":
        tags += ["manylinux2010_x86_64", "manylinux1_x86_64"]
    args = ["--only-binary=:all:", "--implementation", "cp", "--python-version", PYTHON_VERSION]
    args += ["--abi", "cp" + PYTHON_VERSION.replace(".", "")]
    for tag in tags:
        args += ["--platform", tag]
    return args


def _reachable(url: str, timeout_s: float = 3.0) -> bool:
    host = urlparse(url).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def torch_index_args(torch_index: str | None) -> list[str]:
    """--extra-index-url for the CPU torch, or nothing when the index is unset or unreachable
    (then torch must come from pip's own configuration, e.g. a find-links folder holding the wheel):
    pip retries an unreachable index for every package, which takes minutes."""
    if not torch_index:
        return []
    if not _reachable(torch_index):
        log.warning(
            "%s is unreachable: torch must come from pip's configured indexes or find-links", torch_index
        )
        return []
    return ["--extra-index-url", torch_index]


def _pip(python: str, *args: str) -> None:
    subprocess.run([python, "-m", "pip", *args], check=True)


def resolve_lock(
    arch: str = "x86_64", torch_index: str | None = TORCH_CPU_INDEX, python: str = sys.executable
) -> str:
    """The lock's text: every package (with its dependencies) pip resolves for the nodes' platform,
    as `name==version --hash=sha256:...`, sorted. Uses the package indexes, installs nothing."""
    with tempfile.TemporaryDirectory() as scratch:
        requirements = Path(scratch) / "nodes.in"
        requirements.write_text("\n".join(node_requirements()) + "\n", encoding="utf-8")
        report = Path(scratch) / "report.json"
        _pip(
            python, "install", "--quiet", "--dry-run", "--ignore-installed", "--report", str(report),
            "--target", str(Path(scratch) / "target"), *platform_args(arch), *torch_index_args(torch_index),
            "-r", str(requirements),
        )  # fmt: skip
        installs = json.loads(report.read_text(encoding="utf-8"))["install"]
    lines = [
        f"# The Python packages of the EMR nodes ({arch}, CPython {PYTHON_VERSION}, manylinux), exact and",
        "# with hashes for `pip install --require-hashes`. Generated by `make lock` from pyproject.toml",
        "# (minus pyspark: EMR ships Spark); do not edit by hand.",
    ]
    pins = []
    for item in installs:
        name = item["metadata"]["name"].lower().replace("_", "-")
        digest = item["download_info"].get("archive_info", {}).get("hashes", {}).get("sha256")
        if not digest:
            raise InputError(f"lock: pip reported no sha256 for {name} ({item['download_info'].get('url')})")
        pins.append(f"{name}=={item['metadata']['version']} \\\n    --hash=sha256:{digest}")
    return "\n".join(lines + sorted(pins)) + "\n"


def locked_versions(lock_path: Path = LOCK_PATH) -> dict[str, str]:
    """{name: version} of the lock's pins."""
    try:
        text = lock_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{lock_path} does not exist: run `make lock`") from None
    pins = re.findall(r"(?m)^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", text)
    return {name.lower().replace("_", "-"): version for name, version in pins}


def check_lock_current(lock_path: Path = LOCK_PATH) -> None:
    """Fail when pyproject.toml asks for a package or version the lock does not pin."""
    from packaging.requirements import Requirement

    locked = locked_versions(lock_path)
    for line in node_requirements():
        requirement = Requirement(line)
        version = locked.get(requirement.name.lower().replace("_", "-"))
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            found = f"pins {version}" if version else "does not pin it"
            raise InputError(
                f"{lock_path.name} is out of date: pyproject.toml asks for {line}, the lock {found}: run `make lock`"
            )


def lock_hash(lock_path: Path = LOCK_PATH) -> str:
    """The lock's identity: the wheelhouse's folder and S3 key carry it."""
    try:
        return hashlib.sha256(lock_path.read_bytes()).hexdigest()[:16]
    except FileNotFoundError:
        raise InputError(f"{lock_path} does not exist: run `make lock`") from None


def local_dir(lock_path: Path = LOCK_PATH, build_dir: Path | None = None) -> Path:
    """build/wheelhouse-<lock hash>: where `make wheelhouse` puts the lock's wheels."""
    return (build_dir or BUILD_DIR) / f"wheelhouse-{lock_hash(lock_path)}"


def s3_uri(root: str, lock_path: Path = LOCK_PATH) -> str:
    """Where a bucket keeps the wheelhouse of this lock: <root>/wheelhouse/<lock hash>."""
    return join(root, "wheelhouse", lock_hash(lock_path))


def manifest_uri(root: str, lock_path: Path = LOCK_PATH) -> str:
    """The object whose presence says the lock's wheelhouse is completely staged under `root`."""
    return join(s3_uri(root, lock_path), MANIFEST)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build(
    lock_path: Path = LOCK_PATH,
    build_dir: Path | None = None,
    arch: str = "x86_64",
    torch_index: str | None = TORCH_CPU_INDEX,
    python: str = sys.executable,
) -> Path:
    """Download the lock's wheels (hash-checked by pip) into build/wheelhouse-<lock hash>/, once.

    The folder appears complete or not at all: wheels, the lock and the manifest are written to a
    scratch folder that is renamed into place."""
    check_lock_current(lock_path)
    target = local_dir(lock_path, build_dir)
    if (target / MANIFEST).is_file():
        log.info("wheelhouse %s is already built", target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _pip(
            python, "download", "--quiet", "--no-deps", "--require-hashes", "--dest", str(scratch),
            *platform_args(arch), *torch_index_args(torch_index), "-r", str(lock_path),
        )  # fmt: skip
        shutil.copyfile(lock_path, scratch / LOCK_NAME)
        files = {path.name: _sha256(path) for path in sorted(scratch.iterdir())}
        manifest = {"lock_hash": lock_hash(lock_path), "arch": arch, "python": PYTHON_VERSION, "files": files}
        (scratch / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        if (target / MANIFEST).is_file():
            return target  # another build of the same lock finished first
        shutil.rmtree(target, ignore_errors=True)  # a folder left without a manifest
        os.replace(scratch, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("built wheelhouse %s (%d files)", target, len(files))
    return target


def bootstrap_pip_command(
    script: Path = Path(__file__).parent / "bootstrap" / "install_python_deps.sh",
) -> str:
    """The pip command the bootstrap action runs on every node, as the script spells it (for
    `make emr-plan`: the requests name the script, this shows what it installs with)."""
    lines = script.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if '"$PIP_WHEEL/pip" install' in line)
    command = lines[start]
    while command.rstrip().endswith("\\"):
        start += 1
        command = command.rstrip()[:-1] + " " + lines[start].strip()
    command = command[command.index('"$VENV/bin/python"') :].split(" 2>", 1)[0]
    for variable, meaning in (
        ('"$VENV/bin/python"', "<--venv>/bin/python"),
        ('"$PIP_WHEEL/pip"', "<the wheelhouse's pip wheel>/pip"),
        ('"$COMPILE"', "--compile"),
        ('"$WHEELS"', "<local copy of --wheelhouse>"),
        ('"$REQUIREMENTS"', "<local copy of --requirements>"),
    ):
        command = command.replace(variable, meaning)
    return re.sub(r"\s+", " ", command).strip()


def _upload(files: FileStore, path: Path, uri: str) -> None:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        # S3Hook.load_file: a multipart upload from disk, with the store's encryption settings.
        files.s3.load_file(str(path), key=key, bucket_name=bucket, replace=True)
    else:
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, uri)


def stage(files: FileStore, uri: str, source: Path) -> bool:
    """Make the wheelhouse at `uri` complete: reused when its manifest is there, else uploaded from
    `source` (the local build), manifest last. True when something was uploaded."""
    if files.exists(join(uri, MANIFEST)):
        log.info("wheelhouse %s is already staged: reused", uri)
        return False
    if not (source / MANIFEST).is_file():
        raise InputError(
            f"no wheelhouse for the nodes' lock at {join(uri, MANIFEST)} and none built in {source}: "
            "run `make wheelhouse` where this DAG runs (it needs PyPI), then trigger again"
        )
    manifest = json.loads((source / MANIFEST).read_text(encoding="utf-8"))
    for name in manifest["files"]:
        _upload(files, source / name, join(uri, name))
    # Last: a bootstrap (or a later staging) only trusts a wheelhouse whose manifest exists.
    _upload(files, source / MANIFEST, join(uri, MANIFEST))
    log.info("staged wheelhouse %s (%d files) to %s", source, len(manifest["files"]), uri)
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m llm_decoder_airflow.wheelhouse", description=__doc__.split("\n")[0]
    )
    parser.add_argument("command", choices=("lock", "build"))
    parser.add_argument("--lock", type=Path, default=LOCK_PATH, help="the lock file (default: %(default)s)")
    parser.add_argument("--arch", choices=ARCHES, default="x86_64")
    parser.add_argument("--torch-index", default=os.environ.get("TORCH_INDEX", TORCH_CPU_INDEX))
    parser.add_argument("--build-dir", type=Path, default=None, help=f"default: {BUILD_DIR}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "lock":
            args.lock.write_text(resolve_lock(args.arch, args.torch_index), encoding="utf-8")
            log.info("wrote %s (hash %s)", args.lock, lock_hash(args.lock))
        else:
            print(build(args.lock, args.build_dir, args.arch, args.torch_index))
    except InputError as error:
        sys.exit(f"wheelhouse {args.command}: {error}")
    except subprocess.CalledProcessError as error:
        sys.exit(f"wheelhouse {args.command}: pip exited with {error.returncode} (its message is above)")


if __name__ == "__main__":
    main()
