"""IDX files (MNIST, Fashion-MNIST, EMNIST), parsed by hand: a magic number, the dimensions,
then the raw big-endian array. Plain or gzip-compressed. Nothing is ever unpickled."""
from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np

__all__ = ["read_idx", "write_idx"]

# type byte of the magic number -> big-endian numpy dtype (LeCun's format description)
_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
           0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _open(path: str):
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array stored in an IDX file (gzip detected from the content, not the name).

    Raises ValueError, naming the file, on a bad magic number, a size that does not match the
    header, or a truncated gzip stream."""
    path = os.fspath(path)
    try:
        with _open(path) as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:      # a truncated or damaged .gz
        raise ValueError(f"{path}: damaged gzip file ({type(e).__name__}: {e}); download or "
                         "decompress it again") from None
    if len(data) < 4:
        raise ValueError(f"{path}: too short to be an IDX file")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code not in _DTYPES or ndim == 0:
        raise ValueError(f"{path}: not an IDX file (magic bytes {data[:4].hex()})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _DTYPES[dtype_code]
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) - header != count * dtype.itemsize:
        raise ValueError(f"{path}: header says shape {shape} ({count * dtype.itemsize} bytes) but "
                         f"{len(data) - header} bytes follow")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike, arr: np.ndarray, *, compress: bool = False) -> None:
    """Write ``arr`` as an IDX file (used by the tests; handy for exporting)."""
    arr = np.asarray(arr)
    code = {np.dtype(v).newbyteorder("="): k for k, v in _DTYPES.items()}.get(arr.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"IDX cannot store dtype {arr.dtype}")
    payload = struct.pack(">HBB", 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload += arr.astype(_DTYPES[code], copy=False).tobytes()
    opener = gzip.open if compress else open
    with opener(os.fspath(path), "wb") as f:
        f.write(payload)
