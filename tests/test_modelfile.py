"""The model file (format 2: safetensors + sha256; format 1 still read): round trips, and every kind of bad
file refused with a CheckpointError that names the file and the problem, never loaded wrong."""
import json
import pickle
import struct

import numpy as np
import pytest
import safetensors.numpy as stnp

from conftest import run_without_torch
from lowbit.errors import CheckpointError
from lowbit.runtime import modelfile
from lowbit.runtime.modelfile import FORMAT_VERSION, is_model_file, load_model_file, save_model_file

DTYPES = ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]


def _arrays(rng, size=1):
    out = {}
    for i, dt in enumerate(DTYPES):
        info = np.iinfo(dt) if dt[0] in "iu" else np.finfo(dt)
        a = rng.uniform(-1, 1, size=(3 * size, 5)) * float(info.max) / 2
        out[f"t{i}.{dt}"] = (np.clip(a, info.min, info.max) if dt[0] in "iu" else a).astype(dt)
    out["scalar"] = np.array(-2.5, np.float32)
    out["empty"] = np.zeros((0, 7), np.int16)
    out["empty0d"] = np.zeros((2, 0, 3), np.uint64)
    return out


def _craft(path, header: dict, data: bytes = b"", checksum: bool = True):
    """A safetensors file with this header (its lowbit.checksum filled in correctly unless not asked)."""
    if checksum:
        header["__metadata__"][modelfile._CHECKSUM_KEY] = modelfile._checksum(header, data)
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)
    return path


def _meta(kind="k", meta="{}", version="2"):
    return {"lowbit.format": version, "lowbit.kind": kind, "lowbit.meta": meta}


def test_round_trip_every_dtype_0d_and_empty(tmp_path):
    arrays = _arrays(np.random.default_rng(0))
    arrays["big_endian"] = np.arange(6, dtype=">i4").reshape(2, 3)
    arrays["strided"] = np.arange(20, dtype=np.float64).reshape(4, 5).T  # not C-contiguous
    meta = {"recipe": "x", "nested": {"a": [1, 2.5, None, True]}, "unicode": "été ✓"}
    p = tmp_path / "m.lbt"
    save_model_file(p, "some_kind", meta, arrays)
    kind, meta2, loaded = load_model_file(p)
    assert kind == "some_kind" and meta2 == meta
    assert set(loaded) == set(arrays)
    for name, a in arrays.items():
        b = loaded[name]
        assert b.shape == a.shape and b.dtype == a.dtype.newbyteorder("=") and np.array_equal(a, b), name
        assert b.flags.writeable and b.dtype.isnative
    # a plain safetensors file: safetensors reads the same arrays, and our metadata
    theirs = stnp.load_file(p)
    assert set(theirs) == set(arrays) and all(np.array_equal(theirs[n], arrays[n]) for n in arrays)
    from safetensors import safe_open

    with safe_open(p, framework="np") as f:
        md = f.metadata()
    assert md["lowbit.format"] == str(FORMAT_VERSION) == "2" and md["lowbit.kind"] == "some_kind"
    assert json.loads(md["lowbit.meta"]) == meta and md["lowbit.checksum"].startswith("sha256:")
    # no arrays at all
    save_model_file(p, "none", {}, {})
    assert load_model_file(p) == ("none", {}, {})


def test_save_refuses_what_the_format_cannot_hold(tmp_path):
    p = tmp_path / "m.lbt"
    for bad in (np.zeros(2, bool), np.zeros(2, np.float16), np.zeros(2, object), np.zeros(2, np.complex64)):
        with pytest.raises(TypeError, match="cannot be stored"):
            save_model_file(p, "k", {}, {"w": bad})
    with pytest.raises(TypeError, match="cannot be stored"):
        save_model_file(p, "k", {}, {"__metadata__": np.zeros(2, np.int8)})
    with pytest.raises(TypeError):
        save_model_file(p, "k", {"f": object()}, {})
    assert not p.exists()


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(CheckpointError, match=r"nothing\.lbt does not exist"):
        load_model_file(tmp_path / "nothing.lbt")
    cases = {
        "empty": b"",
        "zip": b"PK\x03\x04" + bytes(range(200)),  # e.g. a PyTorch checkpoint
        "text": b"hello, this is a text file and not a model\n" * 3,
        "random": np.random.default_rng(1).bytes(1000),
    }
    for name, blob in cases.items():
        p = tmp_path / f"{name}.lbt"
        p.write_bytes(blob)
        with pytest.raises(CheckpointError, match=rf"{name}\.lbt .*(not a lowbit model file|truncated)"):
            load_model_file(p)


def test_truncated_at_every_offset(tmp_path):
    p = tmp_path / "m.lbt"
    save_model_file(p, "k", {"a": 1}, {"w": np.arange(40, dtype=np.int32), "b": np.ones(3, np.uint8)})
    blob = p.read_bytes()
    cut = tmp_path / "cut.lbt"
    for n in range(len(blob)):
        cut.write_bytes(blob[:n])
        with pytest.raises(CheckpointError, match=r"cut\.lbt.*truncated"):
            load_model_file(cut)
    cut.write_bytes(blob + b"\x00")
    with pytest.raises(CheckpointError, match="trailing bytes"):
        load_model_file(cut)


def _assert_every_flip_refused(path, blob, positions):
    for pos in positions:
        byte, bit = divmod(int(pos), 8)
        flipped = bytearray(blob)
        flipped[byte] ^= 1 << bit
        path.write_bytes(bytes(flipped))
        try:
            load_model_file(path)
        except CheckpointError as exc:
            assert str(path) in str(exc)
        else:
            pytest.fail(f"bit {bit} of byte {byte} flipped and the file still loaded")


def test_fuzz_one_flipped_bit_anywhere_is_refused(tmp_path):
    """~200 random single-bit flips (seeded) across the length field, the header and the data."""
    p = tmp_path / "m.lbt"
    save_model_file(p, "binary_sequential", {"recipe": "mnist-mlp", "layers": [784, 256, 10]},
                    _arrays(np.random.default_rng(2), size=8))
    blob = p.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    rng = np.random.default_rng(1234)
    header_bits = rng.integers(0, (8 + n) * 8, size=100)
    data_bits = rng.integers((8 + n) * 8, len(blob) * 8, size=100)
    _assert_every_flip_refused(tmp_path / "flipped.lbt", blob, np.concatenate([header_bits, data_bits]))


def test_every_single_bit_flip_of_a_small_file_is_refused(tmp_path):
    p = tmp_path / "m.lbt"
    save_model_file(p, "k", {"a": [1, 2]}, {"w": np.arange(6, dtype=np.int16), "s": np.array(1.5)})
    blob = p.read_bytes()
    _assert_every_flip_refused(tmp_path / "flipped.lbt", blob, range(len(blob) * 8))


def test_foreign_safetensors_file(tmp_path):
    p = tmp_path / "foreign.safetensors"
    stnp.save_file({"weight": np.zeros((2, 2), np.float32)}, p)
    with pytest.raises(CheckpointError, match=r"foreign\.safetensors is a safetensors file but not a lowbit model "
                                              r"file.*lowbit export"):
        load_model_file(p)
    stnp.save_file({"weight": np.zeros(2, np.float32)}, p, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="safetensors file but not a lowbit model file"):
        load_model_file(p)
    assert is_model_file(p)  # so 'lowbit eval' routes it here and gets this message, not torch.load's


def test_newer_format_version_says_upgrade(tmp_path, monkeypatch):
    p = tmp_path / "new.lbt"
    monkeypatch.setattr(modelfile, "FORMAT_VERSION", 3)
    save_model_file(p, "k", {}, {"w": np.zeros(3, np.int8)})
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match=r"new\.lbt has model-file format version 3, newer than this lowbit "
                                              r"reads \(2\): upgrade lowbit$"):
        load_model_file(p)


def test_header_defects_with_a_valid_checksum(tmp_path):
    """Files whose checksum verifies (a buggy or hostile writer) are still checked entry by entry."""
    p = tmp_path / "m.lbt"
    p.write_bytes(struct.pack("<Q", 12) + b'{"a": nope }')
    with pytest.raises(CheckpointError, match=r"m\.lbt has a corrupt header: not valid JSON"):
        load_model_file(p)
    p.write_bytes(struct.pack("<Q", 2) + b"{}")
    with pytest.raises(CheckpointError, match="not a lowbit model file"):
        load_model_file(p)
    # a dtype safetensors knows but a model file does not hold
    _craft(p, {"__metadata__": _meta(), "h": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4)
    with pytest.raises(CheckpointError, match=r"m\.lbt: tensor 'h' has dtype 'F16', which a lowbit model file cannot"):
        load_model_file(p)
    _craft(p, {"__metadata__": _meta(), "b": {"dtype": "BOOL", "shape": [2], "data_offsets": [0, 2]}}, b"\0" * 2)
    with pytest.raises(CheckpointError, match="dtype 'BOOL'"):
        load_model_file(p)
    # shape and offsets that disagree, gaps and overlaps, offsets past the end
    bad_tables = {
        "does not fit its offsets": {"w": {"dtype": "I32", "shape": [3], "data_offsets": [0, 8]}},
        "invalid shape": {"w": {"dtype": "I32", "shape": [-2], "data_offsets": [0, 8]}},
        "invalid data offsets": {"w": {"dtype": "I8", "shape": [2], "data_offsets": [6, 4]},
                                 "v": {"dtype": "I8", "shape": [8], "data_offsets": [0, 8]}},
        "expected 0": {"w": {"dtype": "I8", "shape": [4], "data_offsets": [4, 8]}},
        "expected 8": {"w": {"dtype": "I8", "shape": [8], "data_offsets": [0, 8]},
                       "v": {"dtype": "I8", "shape": [4], "data_offsets": [4, 8]}},
        "4 unexpected trailing bytes": {"w": {"dtype": "I8", "shape": [4], "data_offsets": [0, 4]}},
        "malformed entry": {"w": {"dtype": "I8", "shape": [8], "data_offsets": [0, 8], "x": 1}},
    }
    for message, table in bad_tables.items():
        _craft(p, {"__metadata__": _meta(), **table}, bytes(8))
        with pytest.raises(CheckpointError, match=message):
            load_model_file(p)
    _craft(p, {"__metadata__": _meta(), "w": {"dtype": "I8", "shape": [16], "data_offsets": [0, 16]}}, bytes(8))
    with pytest.raises(CheckpointError, match="truncated: 8 of 16 data bytes"):
        load_model_file(p)
    # lowbit metadata that is incomplete or not a version number
    _craft(p, {"__metadata__": {"lowbit.kind": "k"}}, checksum=False)
    with pytest.raises(CheckpointError, match="lacks lowbit.format, lowbit.meta, lowbit.checksum"):
        load_model_file(p)
    _craft(p, {"__metadata__": _meta(version="two")})
    with pytest.raises(CheckpointError, match="format version 'two' is not a number"):
        load_model_file(p)
    _craft(p, {"__metadata__": _meta(version="1")})
    with pytest.raises(CheckpointError, match="cannot have format version 1"):
        load_model_file(p)
    _craft(p, {"__metadata__": _meta(meta="[1, 2]")})
    with pytest.raises(CheckpointError, match="lowbit.meta is a JSON list"):
        load_model_file(p)
    # the good case of the same crafting: loads
    _craft(p, {"__metadata__": _meta(meta='{"x": 1}'),
               "w": {"dtype": "I8", "shape": [2, 2], "data_offsets": [4, 8]},
               "v": {"dtype": "U16", "shape": [2], "data_offsets": [0, 4]}}, bytes(range(8)))
    kind, meta, arrays = load_model_file(p)
    assert kind == "k" and meta == {"x": 1}
    assert arrays["w"].tolist() == [[4, 5], [6, 7]] and arrays["v"].tolist() == [0x0100, 0x0302]


class _Boom:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling this would create the marker file


def test_loading_runs_no_code_from_the_file(tmp_path):
    """Metadata is JSON, parsed as data: a pickle in it is refused or stays a string, never unpickled."""
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Boom(str(marker)), protocol=0).decode("latin-1")
    p = tmp_path / "m.lbt"
    _craft(p, {"__metadata__": _meta(meta=payload)})
    with pytest.raises(CheckpointError, match=r"lowbit.meta is not valid JSON.*lowbit export"):
        load_model_file(p)
    _craft(p, {"__metadata__": _meta(kind=payload, meta=json.dumps({"config": payload}))})
    kind, meta, arrays = load_model_file(p)
    assert kind == payload and meta == {"config": payload} and arrays == {}
    save_model_file(p, "k", {}, {"blob": np.frombuffer(pickle.dumps(_Boom(str(marker))), np.uint8)})
    assert load_model_file(p)[2]["blob"].dtype == np.uint8
    assert not marker.exists()


def test_format_1_files_still_load(tmp_path):
    arrays = {"w": np.arange(12, dtype=np.int8).reshape(3, 4), "t": np.linspace(0, 1, 5),
              "u": np.arange(4, dtype=np.uint64)}
    p = tmp_path / "old.lbt"
    modelfile._save_v1(p, "binary_sequential", {"recipe": "mnist-mlp"}, arrays)
    blob = p.read_bytes()
    assert blob[:8] == b"LOWBIT\x00M" and struct.unpack("<I", blob[8:12]) == (1,) and is_model_file(p)
    kind, meta, loaded = load_model_file(p)
    assert kind == "binary_sequential" and meta == {"recipe": "mnist-mlp"}
    assert set(loaded) == set(arrays) and all(np.array_equal(loaded[k], arrays[k]) for k in arrays)
    assert all(loaded[k].dtype == arrays[k].dtype for k in arrays)
    # and its defects are still reported
    for blob2, message in [(blob[:-3], "truncated"), (blob[:-1] + bytes([blob[-1] ^ 1]), "checksum"),
                           (blob[:8] + struct.pack("<I", 7) + blob[12:], "version 7.*upgrade lowbit"),
                           (blob[:20], "truncated")]:
        p.write_bytes(blob2)
        with pytest.raises(CheckpointError, match=message):
            load_model_file(p)


def test_is_model_file(tmp_path):
    p = tmp_path / "m.lbt"
    save_model_file(p, "k", {}, {})
    assert is_model_file(p)
    p.write_bytes(b"PK\x03\x04" + bytes(100))  # a torch.save zip
    assert not is_model_file(p)
    p.write_bytes(b"")
    assert not is_model_file(p)


def test_the_model_file_module_imports_no_torch(tmp_path):
    p = tmp_path / "m.lbt"
    run_without_torch(
        "import numpy as np, lowbit.runtime.modelfile as mf\n"
        f"mf.save_model_file({str(p)!r}, 'k', {{'a': 1}}, {{'w': np.arange(3, dtype=np.int8)}})\n"
        f"assert mf.load_model_file({str(p)!r})[0] == 'k'\n"
    )
