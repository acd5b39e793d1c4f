"""Wheels for an offline install: the project's own, and those of the dependencies Kaggle lacks.

- :func:`build_project_wheel` builds ``spine`` from its source with ``pip wheel --no-build-isolation`` (no
  network: setuptools and wheel come from this environment, the dev extra).
- :func:`resolve_bundle` follows requirements through this environment's installed metadata, stopping at the
  distributions assumed preinstalled on Kaggle (``provided``), and says which to bundle.
- :func:`repack_installed` writes an installed distribution back into a wheel file: its files (RECORD) and its
  ``.dist-info``, named by the tags of its WHEEL file, with a fresh RECORD. The bundle then holds exactly the
  versions tested here, offline.
- :func:`download_wheels` asks ``pip download`` for the same list instead (network; any Python/platform).
- :func:`verify_wheel` checks a wheel file against its RECORD.
"""

from __future__ import annotations

import base64
import csv
import email
import email.message
import fnmatch
import hashlib
import importlib.metadata as md
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

# dist-info files that belong to the installer, not to the distribution
_INSTALLER_FILES = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json", "RECORD.jws", "RECORD.p7s"}
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


class WheelError(RuntimeError):
    """A wheel that cannot be built, repacked, downloaded or verified."""


def canonical(name: str) -> str:
    """PEP 503 normalised name: lower case, runs of ``-_.`` as one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _escape_name(name: str) -> str:
    """A distribution name as a wheel file name component (``SimpleITK`` -> ``simpleitk``)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def _hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def matches(name: str, patterns: list[str]) -> bool:
    """Does the canonical ``name`` match one of the name globs (themselves canonicalised)?"""
    name = canonical(name)
    return any(fnmatch.fnmatchcase(name, canonical(p)) for p in patterns)


# --------------------------------------------------------------------------------------------------------------
# the project wheel


def find_project(project: str = "") -> Path | None:
    """The source folder of ``spine`` (holding pyproject.toml), or None when spine is installed from a wheel."""
    if project:
        root = Path(project).resolve()
        if not (root / "pyproject.toml").is_file():
            raise WheelError(f"project={project}: no pyproject.toml there")
        return root
    import spine

    root = Path(spine.__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and re.search(r'(?m)^name\s*=\s*"spine"', pyproject.read_text()):
        return root
    return None


def build_project_wheel(root: Path, dest: Path) -> Path:
    """``pip wheel --no-deps --no-build-isolation`` of a clean copy of the project (the checkout is not touched:
    setuptools writes build/ and *.egg-info next to the sources). Returns the wheel's path in ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist", ".*")
    with tempfile.TemporaryDirectory(prefix="spine-wheel-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for item in root.iterdir():
            if item.is_file() and (item.name in {"pyproject.toml", "setup.py", "setup.cfg", "MANIFEST.in"}
                                   or item.name.startswith(("README", "LICENSE", "LICENCE", "NOTICE"))):
                shutil.copy2(item, src / item.name)
        shutil.copytree(root / "spine", src / "spine", ignore=ignore)
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
               "--disable-pip-version-check", "--wheel-dir", str(out), str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
        wheels = sorted(out.glob("spine-*.whl"))
        if proc.returncode or len(wheels) != 1:
            raise WheelError(f"building the spine wheel failed (is the dev extra installed? it brings setuptools "
                             f"and wheel):\n$ {' '.join(cmd)}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
        target = dest / wheels[0].name
        shutil.copy2(wheels[0], target)
    return target


def wheel_metadata(path: Path) -> email.message.Message:
    """The METADATA of a wheel file (``.get_all("Requires-Dist")``, ``["Version"]``)."""
    with zipfile.ZipFile(path) as zf:
        name = next((n for n in zf.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)), None)
        if name is None:
            raise WheelError(f"{path.name}: no .dist-info/METADATA")
        return email.message_from_bytes(zf.read(name))


# --------------------------------------------------------------------------------------------------------------
# which distributions to bundle


@dataclass
class Resolution:
    """The outcome of :func:`resolve_bundle`."""

    bundle: dict[str, md.Distribution] = field(default_factory=dict)  # canonical name -> installed dist
    required_by: dict[str, list[str]] = field(default_factory=dict)  # canonical name -> who asked for it
    # requirements on the preinstalled (provided) distributions: canonical name -> ["spec (from X)", ...]
    provided: dict[str, list[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # installed versions outside a requirement


def _requirements(reqs: list[str], extras: set[str]):
    from packaging.requirements import Requirement

    for text in reqs:
        req = Requirement(text)
        if req.marker is not None:
            envs = [{"extra": e} for e in (extras or {""})]
            if not any(req.marker.evaluate(env) for env in envs):
                continue
        yield req


def resolve_bundle(roots: list[str], provided: list[str], origin: str = "spine") -> Resolution:
    """Follow ``roots`` (requirement strings) through the installed metadata of this environment.

    Every distribution reached that is not ``provided`` is to be bundled (and its requirements followed);
    ``provided`` ones are recorded with the requirements on them but not followed. Raises WheelError for a
    requirement that is neither provided nor installed here.
    """
    res = Resolution()
    queue = [(req, origin) for req in _requirements(roots, set())]
    while queue:
        req, parent = queue.pop(0)
        name = canonical(req.name)
        spec = f"{req.name}{req.specifier}" if str(req.specifier) else req.name
        if matches(name, provided):
            res.provided.setdefault(name, [])
            entry = f"{spec} ({parent})"
            if entry not in res.provided[name]:
                res.provided[name].append(entry)
            continue
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            raise WheelError(f"{req.name} (required by {parent}) is not installed here: install it, or add it to "
                             f"provided if the Kaggle image has it") from None
        if str(req.specifier) and not req.specifier.contains(dist.version, prereleases=True):
            res.problems.append(f"{parent} needs {spec}, installed: {dist.version}")
        res.required_by.setdefault(name, [])
        if parent not in res.required_by[name]:
            res.required_by[name].append(parent)
        if name in res.bundle:
            continue
        res.bundle[name] = dist
        queue.extend((r, dist.metadata["Name"]) for r in _requirements(dist.requires or [], set(req.extras)))
    res.bundle = dict(sorted(res.bundle.items()))
    res.provided = dict(sorted(res.provided.items()))
    return res


# --------------------------------------------------------------------------------------------------------------
# repacking an installed distribution


def _wheel_tags(wheel_text: str) -> str:
    """``py3-none-any`` or a compressed tag set (``cp311-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64``)
    from the ``Tag:`` lines of a WHEEL file."""
    tags = [line.split(":", 1)[1].strip() for line in wheel_text.splitlines() if line.startswith("Tag:")]
    if not tags:
        raise WheelError("WHEEL has no Tag line")
    parts: list[list[str]] = [[], [], []]
    for tag in tags:
        for i, piece in enumerate(tag.split("-")):
            for p in piece.split("."):
                if p not in parts[i]:
                    parts[i].append(p)
    return "-".join(".".join(p) for p in parts)


def _dist_info_dir(dist: md.Distribution) -> str:
    for f in dist.files or []:
        if len(f.parts) == 2 and f.parts[0].endswith(".dist-info") and f.parts[1] == "METADATA":
            return f.parts[0]
    raise WheelError(f"{dist.metadata['Name']}: not installed from a wheel (no .dist-info in its RECORD): "
                     f"use wheels=download")


def _entry_point_scripts(dist: md.Distribution) -> set[str]:
    return {ep.name for ep in dist.entry_points if ep.group in ("console_scripts", "gui_scripts")}


def is_pure(dist: md.Distribution) -> bool:
    """Installed from a pure-Python wheel (``py3-none-any``): the same files for every Python and platform."""
    wheel_text = dist.read_text("WHEEL") or ""
    if "root-is-purelib: true" not in wheel_text.lower():
        return False
    _, abis, platforms = _wheel_tags(wheel_text).split("-")
    return abis == "none" and platforms == "any"


def wheel_filename(dist: md.Distribution) -> str:
    wheel_text = dist.read_text("WHEEL")
    if wheel_text is None:
        raise WheelError(f"{dist.metadata['Name']}: no WHEEL file: not installed from a wheel; use wheels=download")
    return f"{_escape_name(dist.metadata['Name'])}-{dist.version.replace('-', '_')}-{_wheel_tags(wheel_text)}.whl"


def repack_installed(name: str, dest: Path, compresslevel: int = 6) -> Path:
    """Write the installed distribution ``name`` into ``dest`` as a wheel file; returns its path.

    What goes in: every file of its RECORD except byte code and the installer's own files (RECORD, INSTALLER,
    REQUESTED, direct_url.json, uv's *.json); files outside site-packages go to ``<name>.data/``: scripts that
    are not entry points (shebang reset to ``#!python``) to ``scripts/``, the rest to ``data/`` (relative to the
    environment's prefix, where they were). Console-script wrappers are left out: the installer regenerates
    them from entry_points.txt. The tags come from the WHEEL file, so a compiled wheel keeps its platform tag.
    """
    dist = md.distribution(name)
    dist_name = dist.metadata["Name"]
    direct = dist.read_text("direct_url.json")
    if direct and json.loads(direct).get("dir_info", {}).get("editable"):
        raise WheelError(f"{dist_name} is an editable install: it cannot be repacked")
    info = _dist_info_dir(dist)
    filename = wheel_filename(dist)
    data_dir = f"{info[: -len('.dist-info')]}.data"
    site = Path(dist.locate_file("")).resolve()
    prefix = site.parent.parent.parent  # <prefix>/lib/pythonX.Y/site-packages
    scripts = _entry_point_scripts(dist)

    entries: list[tuple[str, Path, bytes | None]] = []  # (arcname, source, replacement content)
    info_entries: list[tuple[str, Path, bytes | None]] = []
    for rel in dist.files or []:
        parts = rel.parts
        if "__pycache__" in parts or rel.suffix in (".pyc", ".pyo"):
            continue
        src = Path(os.path.normpath(site / rel))
        if parts[0] == info:
            if len(parts) == 2 and (parts[1] in _INSTALLER_FILES or re.fullmatch(r"uv_.*\.json", parts[1])):
                continue
            target = info_entries
            arc = "/".join(parts)
        elif parts[0] == ".." or rel.is_absolute():
            try:
                outside = src.relative_to(prefix)
            except ValueError:
                raise WheelError(f"{dist_name}: {rel} lies outside the environment") from None
            if outside.parts[0] in ("bin", "Scripts") and len(outside.parts) == 2:
                if outside.name in scripts or Path(outside.name).stem in scripts:
                    continue
                arc = f"{data_dir}/scripts/{outside.name}"
            else:
                arc = f"{data_dir}/data/{outside.as_posix()}"
            target = entries
        else:
            arc = "/".join(parts)
            target = entries
        if not src.is_file():
            raise WheelError(f"{dist_name}: {rel} is listed in its RECORD but missing: reinstall it")
        content = None
        if arc.startswith(f"{data_dir}/scripts/"):
            raw = src.read_bytes()
            if raw.startswith(b"#!") and b"python" in raw.split(b"\n", 1)[0]:
                content = b"#!python\n" + (raw.split(b"\n", 1)[1] if b"\n" in raw else b"")
        target.append((arc, src, content))

    dest.mkdir(parents=True, exist_ok=True)
    path = dest / filename
    tmp = path.with_suffix(".whl.part")
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=compresslevel) as zf:
            for arc, src, content in sorted(entries) + sorted(info_entries):
                zinfo = zipfile.ZipInfo(arc, date_time=_ZIP_EPOCH)
                zinfo.compress_type = zipfile.ZIP_DEFLATED
                zinfo.external_attr = (src.stat().st_mode & 0xFFFF) << 16
                digest = hashlib.sha256()
                size = 0
                if content is not None:
                    zf.writestr(zinfo, content)
                    digest.update(content)
                    size = len(content)
                else:
                    with open(src, "rb") as fin, zf.open(zinfo, "w", force_zip64=src.stat().st_size > 2**30) as fout:
                        while chunk := fin.read(1 << 20):
                            digest.update(chunk)
                            fout.write(chunk)
                            size += len(chunk)
                b64 = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
                writer.writerow([arc, f"sha256={b64}", size])
            writer.writerow([f"{info}/RECORD", "", ""])
            zinfo = zipfile.ZipInfo(f"{info}/RECORD", date_time=_ZIP_EPOCH)
            zinfo.compress_type = zipfile.ZIP_DEFLATED
            zinfo.external_attr = 0o644 << 16
            zf.writestr(zinfo, record.getvalue())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# --------------------------------------------------------------------------------------------------------------
# pip download


def default_platforms(glibc_minor: int = 35, arch: str = "x86_64") -> list[str]:
    """manylinux tags a glibc 2.<glibc_minor> machine runs (Kaggle's image is Ubuntu 22.04: glibc 2.35).
    pip expands only the legacy aliases (manylinux2014 -> 2010, 1), so the PEP 600 tags are listed."""
    return [f"manylinux_2_{m}_{arch}" for m in range(glibc_minor, 16, -1)] + [f"manylinux2014_{arch}"]


def download_command(requirements: list[str], dest: Path, python_version: str,
                     platforms: list[str]) -> list[str]:
    """The ``pip download`` command for binary wheels of ``requirements`` for another Python and platform."""
    abi = "cp" + python_version.replace(".", "")
    cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--no-deps",
           "--disable-pip-version-check", "--dest", str(dest), "--python-version", python_version,
           "--implementation", "cp", "--abi", abi]
    for platform in platforms or default_platforms():
        cmd += ["--platform", platform]
    return cmd + list(requirements)


def download_wheels(requirements: list[str], dest: Path, python_version: str, platforms: list[str]) -> list[Path]:
    """``pip download`` the wheels of ``requirements`` (``name==version``) into ``dest``; returns the new files."""
    dest.mkdir(parents=True, exist_ok=True)
    before = set(dest.glob("*.whl"))
    cmd = download_command(requirements, dest, python_version, platforms)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise WheelError(f"pip download failed (it needs the network):\n$ {' '.join(cmd)}\n"
                         f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return sorted(set(dest.glob("*.whl")) - before)


# --------------------------------------------------------------------------------------------------------------
# checking a wheel


def verify_wheel(path: Path) -> int:
    """Check a wheel against its RECORD: every file listed with a matching sha256 and size, nothing unlisted,
    one .dist-info with METADATA and WHEEL. Returns the number of files; raises WheelError."""
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise WheelError(f"{path.name}: not a zip file ({err})") from None
    with zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        records = [n for n in names if re.fullmatch(r"[^/]+\.dist-info/RECORD", n)]
        if len(records) != 1:
            raise WheelError(f"{path.name}: expected one .dist-info/RECORD, found {records}")
        info = records[0].split("/")[0]
        for required in ("METADATA", "WHEEL"):
            if f"{info}/{required}" not in names:
                raise WheelError(f"{path.name}: {info}/{required} missing")
        rows = {row[0]: row[1:] for row in csv.reader(io.StringIO(zf.read(records[0]).decode())) if row}
        for name in names:
            if name == records[0] or name.endswith((".dist-info/RECORD.jws", ".dist-info/RECORD.p7s")):
                continue
            if name not in rows:
                raise WheelError(f"{path.name}: {name} is not in RECORD")
            algo_hash, size = rows[name][0], rows[name][1]
            data = zf.read(name)
            if algo_hash.split("=", 1)[0] != "sha256":
                raise WheelError(f"{path.name}: {name}: hash {algo_hash.split('=', 1)[0]!r} is not sha256")
            if _hash(data) != algo_hash or (size and int(size) != len(data)):
                raise WheelError(f"{path.name}: {name} does not match its RECORD hash/size")
        missing = [n for n in rows if n not in names]
        if missing:
            raise WheelError(f"{path.name}: RECORD lists files the wheel lacks: {missing[:5]}")
    return len(names)


def parse_wheel_name(filename: str) -> tuple[str, str, str]:
    """(canonical name, version, tags) of a wheel file name."""
    stem = PurePosixPath(filename).name[: -len(".whl")]
    parts = stem.split("-")
    if len(parts) not in (5, 6):
        raise WheelError(f"{filename}: not a wheel file name")
    return canonical(parts[0]), parts[1], "-".join(parts[-3:])


def compatible_with(tags: str, python_version: str) -> bool:
    """Can a wheel with these (compressed) tags install on CPython ``python_version`` (ignoring platform)?"""
    major, minor = (int(x) for x in python_version.split("."))
    pys, abis, _ = tags.split("-")
    for py in pys.split("."):
        for abi in abis.split("."):
            if py in ("py3", f"py{major}{minor}") and abi == "none":
                return True
            m = re.fullmatch(r"cp(\d)(\d+)", py)
            if m and abi == "abi3" and (int(m.group(1)), int(m.group(2))) <= (major, minor):
                return True
            if py == f"cp{major}{minor}" and abi in (f"cp{major}{minor}", "none", "abi3"):
                return True
    return False
