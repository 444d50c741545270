"""Broken variants of a valid GGUF file, for the model-loading error paths.

    variants = write_variants("tiny.gguf", tmp_path)
    path, fragment = variants["truncated_data"]
    # loading `path` must fail with a message containing `fragment`

Each variant breaks exactly one rule of the strict reader
(native/reference/gguf_reader.c); everything else in the file stays valid, so the
expected fragment is the reader's message for that one rule.  Structural
changes (an extra kv pair, a longer tensor name) are made by parsing the file
into its parts and writing it again with the data section re-aligned; fixed
fields (magic, version, counts) are patched in place.

``Gguf`` is the other kind: a file decoded into kv pairs and tensors that a
test edits (a hostile hyperparameter, a vocabulary table, a tensor type) and
writes back, laid out validly, so a loader meets only the value it was given::

    Gguf.read("tiny.gguf").set("{arch}.block_count", 0).write(tmp_path / "no-layers.gguf")

Only the standard library is used (tensor sizes come from gguf-py's table,
imported when a tensor is read or retyped).
"""

from __future__ import annotations

import dataclasses
import os
import struct
from pathlib import Path

__all__ = ["Gguf", "Kv", "TensorData", "tensor_nbytes", "write_variants"]

_ARRAY, _STRING, _UINT32 = 9, 8, 4
# Byte size of each fixed-size GGUF value type (gguf_type in ggml).
_VALUE_SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_DEFAULT_ALIGNMENT = 32
_HEADER = struct.Struct("<4sIQQ")  # magic, version, tensor count, kv count


@dataclasses.dataclass
class _Tensor:
    name: bytes
    ne: list[int]
    type: int
    offset: int  # relative to the data section


@dataclasses.dataclass
class _Gguf:
    version: int
    kvs: list[tuple[bytes, bytes]]  # (key, raw record: key length .. value)
    tensors: list[_Tensor]
    alignment: int
    data: bytes  # the data section, from its aligned start to the end of the file

    def to_bytes(self) -> bytes:
        """The file with the current parts, the data section re-aligned."""
        out = bytearray(_HEADER.pack(b"GGUF", self.version, len(self.tensors), len(self.kvs)))
        for _, record in self.kvs:
            out += record
        for t in self.tensors:
            out += _string(t.name) + struct.pack(f"<I{len(t.ne)}qIQ", len(t.ne), *t.ne, t.type, t.offset)
        if self.tensors:
            out += bytes(-len(out) % self.alignment)
        return bytes(out + self.data)


def _string(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


def _skip_value(buf: bytes, pos: int, vtype: int) -> int:
    """Offset just past the value of type `vtype` starting at `pos`."""
    if vtype == _STRING:
        (n,) = struct.unpack_from("<Q", buf, pos)
        return int(pos + 8 + n)
    if vtype == _ARRAY:
        etype, n = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        if etype != _STRING:
            return int(pos + n * _VALUE_SIZE[etype])
        for _ in range(n):
            pos = _skip_value(buf, pos, _STRING)
        return pos
    return pos + _VALUE_SIZE[vtype]


def _parse(buf: bytes) -> _Gguf:
    magic, version, n_tensors, n_kv = _HEADER.unpack_from(buf, 0)
    if magic != b"GGUF":
        raise ValueError(f"not a GGUF file: magic {magic!r}")
    pos, kvs, alignment = _HEADER.size, [], _DEFAULT_ALIGNMENT
    for _ in range(n_kv):
        start = pos
        (klen,) = struct.unpack_from("<Q", buf, pos)
        key = buf[pos + 8 : pos + 8 + klen]
        (vtype,) = struct.unpack_from("<I", buf, pos + 8 + klen)
        pos = _skip_value(buf, pos + 12 + klen, vtype)
        if key == b"general.alignment" and vtype == _UINT32:
            (alignment,) = struct.unpack_from("<I", buf, pos - 4)
        kvs.append((key, buf[start:pos]))
    tensors = []
    for _ in range(n_tensors):
        (nlen,) = struct.unpack_from("<Q", buf, pos)
        name = buf[pos + 8 : pos + 8 + nlen]
        pos += 8 + nlen
        (n_dims,) = struct.unpack_from("<I", buf, pos)
        *ne, ttype, offset = struct.unpack_from(f"<{n_dims}qIQ", buf, pos + 4)
        pos += 4 + 8 * n_dims + 12
        tensors.append(_Tensor(name, list(ne), ttype, offset))
    if tensors:
        pos += -pos % alignment
    return _Gguf(version, kvs, tensors, alignment, buf[pos:])


def _q(name: bytes) -> str:
    return name.decode("ascii", "backslashreplace")


def write_variants(src: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> dict[str, tuple[Path, str]]:
    """Writes one broken copy of the GGUF file `src` per rule into `out_dir`.

    Returns ``{name: (path, fragment)}``: loading ``path`` must fail with a
    message containing ``fragment``.  `src` must hold at least one kv pair and
    one tensor (any model does).
    """
    buf = Path(src).read_bytes()
    g = _parse(buf)
    if not g.kvs or not g.tensors:
        raise ValueError(f"{os.fspath(src)!r} needs at least one kv pair and one tensor")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    first, last = g.tensors[0], g.tensors[-1]
    data_start = len(buf) - len(g.data)
    variants: dict[str, tuple[bytes, str]] = {}

    def patched(offset: int, fmt: str, *values: object) -> bytes:
        b = bytearray(buf)
        struct.pack_into(fmt, b, offset, *values)
        return bytes(b)

    def with_kvs(kvs: list[tuple[bytes, bytes]]) -> bytes:
        return dataclasses.replace(g, kvs=kvs).to_bytes()

    def with_tensor(i: int, t: _Tensor) -> bytes:
        tensors = list(g.tensors)
        tensors[i] = t
        return dataclasses.replace(g, tensors=tensors).to_bytes()

    variants["bad_magic"] = (patched(0, "<4s", b"NOPE"), "not a GGUF file: bad magic")
    variants["bad_version"] = (patched(4, "<I", 1), "unsupported GGUF version 1")
    variants["huge_tensor_count"] = (patched(8, "<Q", 2**64 - 1), "tensor count 18446744073709551615")
    variants["huge_string_length"] = (patched(_HEADER.size, "<Q", 2**62), f"key #0 name length {2**62}")
    variants["truncated_data"] = (
        buf[: data_start + last.offset + 1],
        f"truncated tensor data: tensor '{_q(last.name)}' needs bytes",
    )
    # the last tensor claims 1024 times its size: its offset stays valid
    ne = last.ne[:-1] + [last.ne[-1] * 1024]
    variants["data_beyond_eof"] = (
        with_tensor(-1, dataclasses.replace(last, ne=ne)),
        f"truncated tensor data: tensor '{_q(last.name)}' needs bytes",
    )
    variants["unsupported_type"] = (
        with_tensor(0, dataclasses.replace(first, type=31)),
        f"unknown tensor type 31 for tensor '{_q(first.name)}'",
    )
    variants["misaligned_offset"] = (
        with_tensor(-1, dataclasses.replace(last, offset=last.offset + 1)),
        f"is not a multiple of the alignment {g.alignment}",
    )
    long_name = (first.name + b"." + b"x" * 64)[:64]
    variants["name_too_long"] = (
        with_tensor(0, dataclasses.replace(first, name=long_name)),
        f"tensor #0 name '{_q(long_name)}'",
    )
    key0 = g.kvs[0][0]
    variants["duplicate_key"] = (with_kvs([g.kvs[0], *g.kvs]), f"duplicate key '{_q(key0)}'")
    nested = _string(b"broken.nested") + struct.pack("<IIQ", _ARRAY, _ARRAY, 0)
    variants["nested_array"] = (
        with_kvs([*g.kvs, (b"broken.nested", nested)]),
        "key 'broken.nested' is an array of arrays",
    )
    bad_alignment = _string(b"general.alignment") + struct.pack("<II", _UINT32, 48)
    kvs = [kv for kv in g.kvs if kv[0] != b"general.alignment"]
    variants["bad_alignment"] = (
        with_kvs([*kvs, (b"general.alignment", bad_alignment)]),
        "value 48, which is not a power of two",
    )
    # a power of two, but below the multiple of 8 GGUF requires: the data
    # section and every offset stay valid for alignment 1 (they are multiples
    # of it), so only that rule is broken -- and F32 data could sit at odd
    # addresses (issue 13 item 8)
    small_alignment = _string(b"general.alignment") + struct.pack("<II", _UINT32, 1)
    variants["small_alignment"] = (
        dataclasses.replace(g, kvs=[*kvs, (b"general.alignment", small_alignment)], alignment=1).to_bytes(),
        "has value 1, which is not a multiple of 8",
    )

    result: dict[str, tuple[Path, str]] = {}
    for name, (blob, fragment) in variants.items():
        path = out / f"{name}.gguf"
        path.write_bytes(blob)
        result[name] = (path, fragment)
    return result


# ---- a structured editor: hostile values in a valid layout ---------------------------
#
# write_variants breaks the layout; the files below keep it valid and break what a
# loader must check beyond it: hyperparameters, vocabulary tables, tensor shapes and
# types.  Gguf holds every kv pair decoded and every tensor's own bytes, so any of them
# can change and to_bytes() lays the file out again (offsets, padding, alignment).

INT32_TYPE, FLOAT32, UINT64, INT64, FLOAT64, BOOL = 5, 6, 10, 11, 12, 7
_SCALAR_FORMAT = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


@dataclasses.dataclass
class Kv:
    """A decoded kv pair: vtype is the GGUF value type; arrays carry arr_type and a list."""

    vtype: int
    value: object
    arr_type: int = 0


@dataclasses.dataclass
class TensorData:
    name: str
    ne: list[int]
    type: int
    data: bytes  # exactly the tensor's bytes, no padding


def tensor_nbytes(ggml_type: int, ne: list[int]) -> int:
    """Bytes of a tensor of ggml_type with dims ne (I2_S: BitNet.cpp's codes + 32-byte scale)."""
    n = 1
    for d in ne:
        n *= d
    if ggml_type == 36:  # I2_S, unknown to gguf-py
        return n // 4 + 32
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType  # the table gguf-py writes with

    block, size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    return n // block * size


def _decode_value(buf: bytes, pos: int, vtype: int) -> tuple[object, int]:
    if vtype == _STRING:
        (n,) = struct.unpack_from("<Q", buf, pos)
        return buf[pos + 8 : pos + 8 + n].decode("utf-8", "surrogateescape"), pos + 8 + n
    fmt = "<" + _SCALAR_FORMAT[vtype]
    return struct.unpack_from(fmt, buf, pos)[0], pos + struct.calcsize(fmt)


def _encode_value(vtype: int, value: object) -> bytes:
    if vtype == _STRING:
        raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)  # type: ignore[arg-type]
        return _string(raw)
    return struct.pack("<" + _SCALAR_FORMAT[vtype], value)


@dataclasses.dataclass
class Gguf:
    """A GGUF file as decoded kv pairs and tensors; edit them, then to_bytes() / write()."""

    version: int
    kvs: dict[str, Kv]
    tensors: list[TensorData]

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> Gguf:
        buf = Path(path).read_bytes()
        raw = _parse(buf)
        kvs: dict[str, Kv] = {}
        for key, record in raw.kvs:
            pos = 8 + len(key)
            (vtype,) = struct.unpack_from("<I", record, pos)
            pos += 4
            if vtype == _ARRAY:
                etype, n = struct.unpack_from("<IQ", record, pos)
                pos += 12
                items = []
                for _ in range(n):
                    item, pos = _decode_value(record, pos, etype)
                    items.append(item)
                kvs[key.decode()] = Kv(vtype, items, etype)
            else:
                kvs[key.decode()] = Kv(vtype, _decode_value(record, pos, vtype)[0])
        tensors = [
            TensorData(t.name.decode(), list(t.ne), t.type, raw.data[t.offset : t.offset + tensor_nbytes(t.type, t.ne)])
            for t in raw.tensors
        ]
        return cls(raw.version, kvs, tensors)

    @property
    def arch(self) -> str:
        return str(self.kvs["general.architecture"].value)

    def set(self, key: str, value: object, vtype: int | None = None, arr_type: int | None = None) -> Gguf:
        """Sets key (an `{arch}.` prefix is filled in); the old type is kept unless given."""
        key = key.replace("{arch}", self.arch)
        old = self.kvs.get(key)
        if vtype is None:
            if old is None:
                raise KeyError(f"{key!r} is not in the file: pass vtype")
            vtype = old.vtype
        if arr_type is None:
            arr_type = old.arr_type if old is not None and vtype == _ARRAY else 0
        self.kvs[key] = Kv(vtype, value, arr_type)
        return self

    def drop(self, key: str) -> Gguf:
        del self.kvs[key.replace("{arch}", self.arch)]
        return self

    def tensor(self, name: str) -> TensorData:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(f"no tensor {name!r}")

    def retype(self, name: str, ggml_type: int, ne: list[int] | None = None, fill: int = 0) -> Gguf:
        """Gives tensor `name` another type (and dims), its bytes all `fill`."""
        t = self.tensor(name)
        t.type = ggml_type
        t.ne = list(ne if ne is not None else t.ne)
        t.data = bytes([fill]) * tensor_nbytes(ggml_type, t.ne)
        return self

    def alignment(self) -> int:
        kv = self.kvs.get("general.alignment")
        return int(kv.value) if kv is not None and kv.vtype == _UINT32 else _DEFAULT_ALIGNMENT  # type: ignore[call-overload]

    def to_bytes(self) -> bytes:
        records = []
        for key, kv in self.kvs.items():
            rec = _string(key.encode()) + struct.pack("<I", kv.vtype)
            if kv.vtype == _ARRAY:
                items = list(kv.value)  # type: ignore[call-overload]
                rec += struct.pack("<IQ", kv.arr_type, len(items)) + b"".join(_encode_value(kv.arr_type, v) for v in items)
            else:
                rec += _encode_value(kv.vtype, kv.value)
            records.append((key.encode(), rec))
        align = max(self.alignment(), 1)
        tensors, data, offset = [], bytearray(), 0
        for t in self.tensors:
            tensors.append(_Tensor(t.name.encode(), t.ne, t.type, offset))
            padded = t.data + bytes(-len(t.data) % align)
            data += padded
            offset += len(padded)
        return _Gguf(self.version, records, tensors, align, bytes(data)).to_bytes()

    def write(self, path: str | os.PathLike[str]) -> Path:
        Path(path).write_bytes(self.to_bytes())
        return Path(path)
