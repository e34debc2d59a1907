"""Makes the NumPy and safetensors fixtures of tests/arrays.rs, and checks gradscope's own output.

    python tests/data/arrays/make_fixtures.py          # (re)write the fixtures
    python tests/data/arrays/make_fixtures.py --check  # check gradscope's written files

Needs numpy and safetensors (`pip install numpy safetensors`); the test suite never runs it.
Every file here was made by this script with numpy 2.4.6 and safetensors 0.8.0, except
`written.npz` and `written.safetensors`, which gradscope wrote (tests/arrays.rs compares its
output with them byte for byte) and which `--check` reads back with numpy and safetensors.
"""

import json
import struct
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

HERE = Path(__file__).parent

# One 2x3 table of small integers, written in every dtype: each converts exactly to f64.
SIGNED = np.array([[0, 1, -2], [3, -4, 5]])
UNSIGNED = np.array([[0, 1, 2], [3, 4, 250]])
FLOATS = np.array([[0.5, -1.5, 2.25], [1e-3, -7.0, 1024.0]])


def npy():
    for dt in ["float64", "float32", "float16"]:
        np.save(HERE / f"{dt}.npy", FLOATS.astype(dt))
    for dt in ["int64", "int32", "int16", "int8"]:
        np.save(HERE / f"{dt}.npy", SIGNED.astype(dt))
    for dt in ["uint8", "uint16", "uint32", "uint64"]:
        np.save(HERE / f"{dt}.npy", UNSIGNED.astype(dt))
    np.save(HERE / "bool.npy", np.array([[True, False, True], [False, False, True]]))
    np.save(HERE / "scalar.npy", np.float64(2.5))
    np.save(HERE / "labels.npy", np.array([2, 0, 1, 1], dtype=np.int64))
    # Fortran order: the same values as C order, stored column by column.
    np.save(HERE / "fortran.npy", np.asfortranarray(FLOATS))
    np.save(HERE / "fortran3.npy", np.asfortranarray(np.arange(24.0).reshape(2, 3, 4)))
    np.save(HERE / "big_endian.npy", FLOATS.astype(">f8"))
    np.save(HERE / "big_endian_i4.npy", SIGNED.astype(">i4"))
    # What gradscope refuses: complex, strings, records, long double.
    np.save(HERE / "complex.npy", FLOATS.astype(np.complex128))
    np.save(HERE / "strings.npy", np.array(["a", "bc"]))
    np.save(HERE / "records.npy", np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")]))
    np.save(HERE / "longdouble.npy", FLOATS.astype(np.longdouble))
    assert np.load(HERE / "fortran.npy").flags.f_contiguous


def npz():
    np.savez(HERE / "arrays.npz", x=FLOATS, labels=SIGNED.astype(np.int64), b=np.float32(0.25))
    np.savez_compressed(HERE / "compressed.npz", x=FLOATS, i8=SIGNED.astype(np.int8))
    np.savez(HERE / "single.npz", FLOATS)  # stored as `arr_0`
    np.savez(HERE / "mixed.npz", x=FLOATS, z=FLOATS.astype(np.complex64))


def safetensors():
    save_file(
        {
            "fc1.weight": FLOATS.astype(np.float32),
            "fc1.bias": np.array([0.5, -0.25, 1.0], dtype=np.float32),
            "embed": FLOATS.astype(np.float16),
            "f64": FLOATS,
            "i8": SIGNED.astype(np.int8),
            "i64": SIGNED.astype(np.int64),
            "u16": UNSIGNED.astype(np.uint16),
            "u64": UNSIGNED.astype(np.uint64),
            "mask": np.array([[True, False, True], [False, False, True]]),
            "scalar": np.array(2.5, dtype=np.float32),
        },
        HERE / "model.safetensors",
    )
    # numpy has no bfloat16, so these are written by hand per the format: an 8-byte little-endian
    # header length, the JSON header, then the bytes. bf16 is the top half of an f32.
    bf16 = np.array(FLOATS.astype(np.float32).view(np.uint32) >> 16, dtype="<u2")
    hand_written("bf16.safetensors", "BF16", [2, 3], bf16.tobytes())
    hand_written("f8.safetensors", "F8_E4M3", [2], bytes([0x38, 0xC0]))
    check_bf16()


def hand_written(name, dtype, shape, data):
    header = {"w": {"dtype": dtype, "shape": shape, "data_offsets": [0, len(data)]}}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    (HERE / name).write_bytes(struct.pack("<Q", len(text)) + text + data)


def check_bf16():
    raw = (HERE / "bf16.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    bits = np.frombuffer(raw[8 + n :], dtype="<u2").astype(np.uint32) << 16
    got = bits.view(np.float32).reshape(2, 3)
    # Truncated to bf16: every value but 1e-3 is exact.
    want = (FLOATS.astype(np.float32).view(np.uint32) >> 16 << 16).view(np.float32)
    assert np.array_equal(got, want), (got, want)
    assert np.array_equal(np.delete(got.ravel(), 3), np.delete(FLOATS.ravel(), 3))


# What tests/arrays.rs writes: the values of WRITTEN, as gradscope names a single run's params.
def written_values():
    w = (np.arange(6.0).reshape(2, 3) * 0.25 - 0.5).astype(np.float32)
    return {
        "w": w,
        "w.best": (w * 2).astype(np.float32),
        "b": np.array(0.125, dtype=np.float32),
        "b.best": np.array(-3.0, dtype=np.float32),
        "h": np.array([1.5, -2.0, 65504.0], dtype=np.float16),
        "d": np.array([1e-300, np.pi], dtype=np.float64),
    }


def expected():
    """safetensors' own writer on the same values: gradscope's file must be byte-identical."""
    save_file(written_values(), HERE / "expected.safetensors")


def check():
    want = written_values()
    for name, load in [
        ("written.safetensors", load_file),
        ("written.npz", lambda p: dict(np.load(p))),
    ]:
        got = load(HERE / name)
        assert sorted(got) == sorted(want), (name, sorted(got))
        for k, v in want.items():
            assert got[k].dtype == v.dtype, (name, k, got[k].dtype)
            assert got[k].shape == v.shape, (name, k, got[k].shape)
            assert got[k].tobytes() == v.tobytes(), (name, k)
    assert (HERE / "written.safetensors").read_bytes() == (HERE / "expected.safetensors").read_bytes()
    print("numpy and safetensors read written.npz and written.safetensors exactly")


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        check()
    else:
        npy()
        npz()
        safetensors()
        expected()
