#!/usr/bin/env python3
"""Install detectron2 into a Python environment.

detectron2 has no release on PyPI. Two sources are supported:

``--source pypi`` (default)
    ``pb1-detectron2==0.6`` is an sdist on PyPI that is byte-identical to upstream detectron2
    v0.6 apart from its package name, but it lacks the C++ sources, so its own ``setup.py``
    cannot build. This script fetches that sdist by name from the package index, checks its
    sha256 against the pinned value below, and installs its pure-Python ``detectron2`` package
    (model-zoo configs included) as a wheel, without the compiled extension and without the
    obsolete ``black==21.4b2`` pin. Its other requirements are installed normally by pip.
    Faster R-CNN runs on this build; ``detlit.compat`` supplies what the missing compiled ops
    and today's Pillow/setuptools need. Rotated-box and deformable ops raise a clear error.

    ``pip download`` cannot fetch the sdist itself: pip prepares its metadata and rejects it
    because an optional extra declares a direct URL dependency. The file is therefore located
    through the index's JSON simple API (PEP 691), the same index pip uses.

``--source git``
    Upstream detectron2 from its git repository, compiled against the installed torch (needs
    internet access and a C++ toolchain; CUDA ops when a CUDA toolkit is present).

When ``import detectron2`` already works in the target interpreter, nothing is done.
"""

from __future__ import annotations

import argparse
import ast
import base64
import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

SDIST_NAME = "pb1-detectron2"
SDIST_VERSION = "0.6"
SDIST_FILE = f"{SDIST_NAME}-{SDIST_VERSION}.tar.gz"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
WHEEL_VERSION = f"{SDIST_VERSION}+purepython"
WHEEL_FILE = f"detectron2-{WHEEL_VERSION}-py3-none-any.whl"
DROPPED_REQUIREMENTS = ("black",)
GIT_URL = "git+https://github.com/facebookresearch/detectron2.git"
DEFAULT_INDEX = "https://pypi.org/simple"


class InstallError(RuntimeError):
    """A failure with a message meant for the user."""


def detectron2_location(python: str) -> str | None:
    """Return where ``import detectron2`` finds the package in ``python``, or None."""
    probe = "import detectron2, os; print(os.path.dirname(detectron2.__file__))"
    result = subprocess.run([python, "-c", probe], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None


def index_url() -> str:
    """The package index pip is configured with (``PIP_INDEX_URL`` or PyPI)."""
    return os.environ.get("PIP_INDEX_URL", DEFAULT_INDEX).rstrip("/")


def locate_sdist(index: str) -> tuple[str, str]:
    """Find the sdist's download URL and the sha256 the index publishes for it."""
    page = f"{index}/{SDIST_NAME}/"
    request = urllib.request.Request(page, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            listing = json.load(response)
    except (urllib.error.URLError, json.JSONDecodeError, TimeoutError) as err:
        raise InstallError(
            f"could not read the package index page {page} ({err}); check the network or "
            "set PIP_INDEX_URL to an index that serves PEP 691 JSON, or use --sdist FILE"
        ) from err
    for entry in listing.get("files", []):
        if entry.get("filename") == SDIST_FILE:
            return entry["url"], entry.get("hashes", {}).get("sha256", "")
    raise InstallError(f"{page} does not list {SDIST_FILE}; use --sdist FILE or --source git")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_sdist(cache_dir: Path) -> Path:
    """Download the sdist into ``cache_dir`` (reused when present) and verify its sha256."""
    target = cache_dir / SDIST_FILE
    if not target.exists():
        url, published = locate_sdist(index_url())
        if published and published != SDIST_SHA256:
            raise InstallError(
                f"the index publishes sha256 {published} for {SDIST_FILE}, expected "
                f"{SDIST_SHA256}; refusing to install it (use --source git instead)"
            )
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".part")
        print(f"downloading {url}")
        try:
            urllib.request.urlretrieve(url, partial)
        except urllib.error.URLError as err:
            raise InstallError(f"could not download {url} ({err})") from err
        partial.replace(target)
    verify_sha256(target)
    return target


def verify_sha256(sdist: Path) -> None:
    actual = sha256_of(sdist)
    if actual != SDIST_SHA256:
        raise InstallError(
            f"{sdist} has sha256 {actual}, expected {SDIST_SHA256}: it is not the pinned "
            f"{SDIST_NAME} {SDIST_VERSION}; delete the file and retry, or use --source git"
        )
    print(f"{sdist.name}: sha256 verified ({SDIST_SHA256[:12]}...)")


def install_requires(setup_py: str) -> list[str]:
    """Read ``install_requires`` from the sdist's setup.py without running it."""
    for node in ast.walk(ast.parse(setup_py)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup":
            for keyword in node.keywords:
                if keyword.arg == "install_requires":
                    requirements: list[str] = ast.literal_eval(keyword.value)
                    return requirements
    raise InstallError("the sdist's setup.py has no install_requires list")


def kept_requirements(requirements: list[str]) -> list[str]:
    """Drop the obsolete pins and requirements whose marker excludes Python >= 3.10."""
    kept = []
    for requirement in requirements:
        name = requirement.split(";")[0].strip()
        bare = name.split("=")[0].split("<")[0].split(">")[0].strip()
        if bare in DROPPED_REQUIREMENTS or "python_version<'3.7'" in requirement.replace(" ", ""):
            continue
        kept.append(requirement)
    return kept


def _record_row(name: str, data: bytes) -> list[str]:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return [name, f"sha256={digest}", str(len(data))]


def build_wheel(sdist: Path, out_dir: Path) -> Path:
    """Write a pure-Python wheel of the sdist's ``detectron2`` package (configs included)."""
    prefix = f"{SDIST_NAME}-{SDIST_VERSION}/"
    files: dict[str, bytes] = {}
    setup_py = ""
    license_text = b""
    with tarfile.open(sdist) as archive:
        for member in archive.getmembers():
            if not member.isfile() or not member.name.startswith(prefix):
                continue
            relative = member.name[len(prefix) :]
            extracted = archive.extractfile(member)
            assert extracted is not None
            data = extracted.read()
            if relative == "setup.py":
                setup_py = data.decode()
            elif relative == "LICENSE":
                license_text = data
            elif relative.startswith("detectron2/") and not relative.endswith((".so", ".pyc")):
                files[relative] = data
    if not any(name.startswith("detectron2/model_zoo/configs/") for name in files):
        raise InstallError(f"{sdist} holds no detectron2/model_zoo/configs; it cannot be used")
    dist_info = f"detectron2-{WHEEL_VERSION}.dist-info"
    metadata = [
        "Metadata-Version: 2.1",
        "Name: detectron2",
        f"Version: {WHEEL_VERSION}",
        "Summary: detectron2 v0.6 (pure Python build of the pb1-detectron2 sdist, no compiled ops)",
        "Home-page: https://github.com/facebookresearch/detectron2",
        "License: Apache-2.0",
        "Requires-Python: >=3.6",
    ]
    metadata += [f"Requires-Dist: {req}" for req in kept_requirements(install_requires(setup_py))]
    files[f"{dist_info}/METADATA"] = ("\n".join(metadata) + "\n").encode()
    files[f"{dist_info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: detlit-install-detectron2\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    files[f"{dist_info}/LICENSE"] = license_text
    files[f"{dist_info}/top_level.txt"] = b"detectron2\n"
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for name in sorted(files):
        writer.writerow(_record_row(name, files[name]))
    writer.writerow([f"{dist_info}/RECORD", "", ""])
    files[f"{dist_info}/RECORD"] = record.getvalue().encode()
    wheel = out_dir / WHEEL_FILE
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=(2021, 10, 25, 0, 0, 0))
            info.external_attr = 0o644 << 16
            archive.writestr(info, files[name], compress_type=zipfile.ZIP_DEFLATED)
    print(f"built {wheel.name}: {sum(n.endswith('.yaml') for n in files)} model-zoo yaml files")
    return wheel


def pip_install(python: str, args: list[str], constraints: Path | None) -> None:
    command = [python, "-m", "pip", "install", *args]
    if constraints is not None:
        command += ["-c", str(constraints)]
    print("+", " ".join(command))
    if subprocess.run(command).returncode != 0:
        raise InstallError(f"pip failed: {' '.join(command)}")


def install_from_pypi(python: str, cache_dir: Path, sdist: Path | None, constraints: Path | None) -> None:
    if sdist is not None:
        verify_sha256(sdist)
    else:
        sdist = fetch_sdist(cache_dir)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = build_wheel(sdist, Path(tmp))
        pip_install(python, [str(wheel)], constraints)


def install_from_git(python: str, ref: str, constraints: Path | None) -> None:
    # setup.py imports torch, so the build must see the already installed torch.
    pip_install(python, ["--no-build-isolation", f"{GIT_URL}@{ref}"], constraints)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", choices=("pypi", "git"), default="pypi")
    parser.add_argument("--python", default=sys.executable, help="interpreter to install into")
    parser.add_argument("--git-ref", default="main", help="branch, tag or commit for --source git")
    parser.add_argument("--sdist", type=Path, help="use this local pb1-detectron2 sdist file")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "detlit", help="download cache")
    parser.add_argument("--constraints", type=Path, help="pip constraints file (torch pins)")
    parser.add_argument("--force", action="store_true", help="install even if detectron2 imports")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    location = detectron2_location(args.python)
    if location and not args.force:
        print(f"detectron2 already importable from {location}; nothing to do")
        return 0
    try:
        if args.source == "git":
            install_from_git(args.python, args.git_ref, args.constraints)
        else:
            install_from_pypi(args.python, args.cache_dir, args.sdist, args.constraints)
    except InstallError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    location = detectron2_location(args.python)
    if location is None:
        print("error: detectron2 was installed but does not import", file=sys.stderr)
        return 1
    print(f"detectron2 installed at {location}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
