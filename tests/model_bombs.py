"""Hostile model files for the tests (issue 26, case 2), written without allocating what they declare."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path


def write_inflating_model(path: Path, numel: int = 1 << 29) -> None:
    """A torch.save-shaped archive whose one tensor storage (numel float32 zeros, 2 GiB) is deflated to ~2 MB.

    Deflate with a full flush after each 16 MiB of zeros makes the same bytes every time, so the stream is one piece
    repeated; the CRC of 2 GiB of zeros is a constant."""
    import collections
    import io
    import pickle

    import torch

    class Storage:
        pass

    class Tensor:
        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2, (STORAGE, 0, (numel,), (1,), False, collections.OrderedDict()))

    STORAGE = Storage()

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", numel) if obj is STORAGE else None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump({"format": "pupick-model", "version": 1, "config": {"arch": "resnet8"},
                                   "state_dict": {"features.0.conv.weight": Tensor()}})
    chunk = bytes(1 << 24)
    assert numel * 4 == 128 * len(chunk)
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = co.compress(chunk) + co.flush(zlib.Z_FULL_FLUSH)
    deflated = piece * 128 + co.flush()
    entries = [(b"archive/data.pkl", buf.getvalue(), zlib.crc32(buf.getvalue()), 0, len(buf.getvalue())),
               (b"archive/byteorder", b"little", zlib.crc32(b"little"), 0, 6),
               (b"archive/data/0", deflated, 0x4DBDF21C, 8, numel * 4),
               (b"archive/version", b"3\n", zlib.crc32(b"3\n"), 0, 2)]
    out, central = bytearray(), bytearray()
    for name, data, crc, method, size in entries:
        offset = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc, len(data), size, len(name), 0)
        out += name + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0, crc, len(data), size,
                               len(name), 0, 0, 0, 0, 0, offset) + name
    out += central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central), len(out), 0)
    path.write_bytes(bytes(out))
