"""System shared memory (Triton's extension): the registry of clients' POSIX shm regions, and tensors read
from and written to them.

A client creates a shm object (`shm_open`, as `tritonclient.utils.shared_memory` does), registers a
region of it by name, key, offset and byte size, then names the region in an input's or output's
`shared_memory_region` / `shared_memory_offset` / `shared_memory_byte_size` parameters instead of
sending the tensor's bytes.

The server never maps a region: a client may truncate its object at any time, and touching a
mapping past the end of its file kills the process with SIGBUS. Inputs are read and outputs
written with pread/pwrite on the object's file descriptor against its size at that moment, so a
shrunk object gives a short read (a clean error) instead of a crash; the copy costs about as much
as one pass over the tensor. A region in use stays open until its last user is done, even when it
is unregistered meanwhile, so its descriptor is never closed (and its number reused) under a read.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import bad_request, quoted
from service.runtime.tensors import array_from_bytes, fixed_byte_size

# Where Linux keeps POSIX shm objects: shm_open(key) opens SHM_ROOT / key.
SHM_ROOT = Path("/dev/shm")
REGION = "shared_memory_region"
OFFSET = "shared_memory_offset"
BYTE_SIZE = "shared_memory_byte_size"
# One slash at most, leading; no path tricks (shm_open refuses others too).
_KEY = re.compile(r"/?[^/\x00]+")


@dataclass(frozen=True)
class RegionSlice:
    """Where a tensor lies: `byte_size` bytes from `offset` within the region `region`."""

    region: str
    offset: int
    byte_size: int


def region_slice(parameters: Mapping[str, Any], what: str) -> RegionSlice | None:
    """The shared-memory parameters of an input or output (None when it names no region); 400
    when they are incomplete or of the wrong type. `what` names the tensor in errors."""
    region = parameters.get(REGION)
    size = parameters.get(BYTE_SIZE)
    if region is None and size is None:
        if OFFSET in parameters:
            raise bad_request(f"{what}: {OFFSET} without {REGION} and {BYTE_SIZE}")
        return None
    if region is None or size is None:
        raise bad_request(f"{what}: {REGION} and {BYTE_SIZE} go together")
    if not isinstance(region, str) or not region:
        raise bad_request(f"{what}: {REGION} must be a region's name")
    offset = parameters.get(OFFSET, 0)
    for name, value in ((OFFSET, offset), (BYTE_SIZE, size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise bad_request(f"{what}: {name} must be a non-negative integer")
    return RegionSlice(region, offset, size)


class _Region:
    def __init__(self, name: str, key: str, offset: int, byte_size: int, fd: int):
        self.name, self.key, self.offset, self.byte_size, self.fd = name, key, offset, byte_size, fd
        self.users = 0
        self.unregistered = False

    def status(self) -> dict:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}


class SharedMemoryRegistry:
    """The registered regions by name. Thread-safe; every read and write checks its bounds
    against the region and the object's current size. An input read from a region may be at most
    `max_input_size` bytes, as large as a request body may be."""

    def __init__(self, max_input_size: int | None = None) -> None:
        self._regions: dict[str, _Region] = {}
        self._lock = threading.Lock()
        self._max_input_size = max_input_size

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Open shm object `key` and register `byte_size` bytes of it from `offset` as `name`;
        400 for a name in use, a bad key, or an object that is missing or too small."""
        if not name:
            raise bad_request("a shared memory region needs a name")
        if not isinstance(key, str) or not _KEY.fullmatch(key) or key.lstrip("/") in (".", ".."):
            raise bad_request(f"shared memory key {quoted(key)} is not a POSIX shm name ('/name', no other slash)")
        for field, value in (("offset", offset), ("byte_size", byte_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise bad_request(f"shared memory region {quoted(name)}: {field} must be a non-negative integer")
        with self._lock:
            if name in self._regions:
                raise bad_request(f"shared memory region {quoted(name)} is already registered")
            try:
                # No symlinks: a link planted in /dev/shm must not hand a client the server's files.
                fd = os.open(SHM_ROOT / key.lstrip("/"), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as error:
                raise bad_request(f"cannot open shared memory key {quoted(key)}: {error.strerror}") from None
            try:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    raise bad_request(f"shared memory key {quoted(key)} is not a shared memory object")
                if info.st_size < offset + byte_size:
                    raise bad_request(
                        f"shared memory region {quoted(name)}: offset {offset} + byte_size {byte_size} runs past "
                        f"the end of {quoted(key)} ({info.st_size} bytes)"
                    )
            except BaseException:
                os.close(fd)
                raise
            self._regions[name] = _Region(name, key, offset, byte_size, fd)

    def unregister(self, name: str | None = None) -> None:
        """Forget region `name` (every region when None); unknown names are no error, as in Triton.
        A region still in use is closed when its last request is done with it."""
        with self._lock:
            regions = (
                list(self._regions.values()) if name is None else [self._regions[name]] if name in self._regions else []
            )
            for region in regions:
                del self._regions[region.name]
                region.unregistered = True
                if not region.users:
                    os.close(region.fd)

    def status(self, name: str | None = None) -> list[dict]:
        """Triton's status objects of region `name` (400 when not registered) or of every region."""
        with self._lock:
            if name is None:
                return [region.status() for region in self._regions.values()]
            if name not in self._regions:
                raise bad_request(f"no shared memory region {quoted(name)} is registered")
            return [self._regions[name].status()]

    def check(self, where: RegionSlice, what: str) -> None:
        """400 unless `where` names a registered region and lies within it."""
        with self._using(where, what):
            pass

    def read_input(self, where: RegionSlice, name: str, datatype: str, shape: list[int]) -> np.ndarray:
        """Input `name`'s array (a copy) from `where`; 400 before any buffer is made unless the region
        is registered, holds `where`, and `where.byte_size` is what the datatype and shape take."""
        what = f"input {quoted(name)}"
        expected = fixed_byte_size(datatype, shape)
        if expected is not None and where.byte_size != expected:
            raise bad_request(
                f"{what}: {where.byte_size} bytes of data, expected {expected} for shape {list(shape)} of {datatype} "
                f"({BYTE_SIZE})"
            )
        if self._max_input_size is not None and where.byte_size > self._max_input_size:
            raise bad_request(
                f"{what}: {BYTE_SIZE} {where.byte_size} is larger than the server's limit of "
                f"{self._max_input_size} bytes (--max-request-size)"
            )
        with self._using(where, what) as region:
            self._transfer(region, where, what, where.byte_size)
            data = np.empty(where.byte_size, np.uint8)  # only now: the size is known to lie within the region
            done = 0
            while done < data.size:
                count = os.preadv(region.fd, [data.data[done:]], region.offset + where.offset + done)
                if count == 0:  # the object shrank between the size check and the read
                    raise bad_request(f"{what}: shared memory region {quoted(where.region)} shrank while it was read")
                done += count
        return array_from_bytes(name, datatype, shape, data)

    def write(self, where: RegionSlice, data: memoryview, what: str) -> None:
        """Write `data` at `where` (400 when it is larger than `where.byte_size`)."""
        if data.nbytes > where.byte_size:
            raise bad_request(
                f"{what}: {data.nbytes} bytes of results do not fit the {where.byte_size} bytes given in shared memory"
            )
        with self._using(where, what) as region:
            self._transfer(region, where, what, data.nbytes)
            done = 0
            while done < data.nbytes:
                done += os.pwrite(region.fd, data[done:], region.offset + where.offset + done)

    @contextlib.contextmanager
    def _using(self, where: RegionSlice, what: str) -> Iterator[_Region]:
        with self._lock:
            region = self._regions.get(where.region)
            if region is None:
                raise bad_request(f"{what}: no shared memory region {quoted(where.region)} is registered")
            if where.offset + where.byte_size > region.byte_size:
                raise bad_request(
                    f"{what}: offset {where.offset} + byte_size {where.byte_size} runs past the end of shared "
                    f"memory region {quoted(where.region)} ({region.byte_size} bytes)"
                )
            region.users += 1
        try:
            yield region
        finally:
            with self._lock:
                region.users -= 1
                if region.unregistered and not region.users:
                    os.close(region.fd)

    @staticmethod
    def _transfer(region: _Region, where: RegionSlice, what: str, size: int) -> None:
        """400 when the object behind `region` is now too small for `size` bytes at `where`."""
        end = region.offset + where.offset + size
        if os.fstat(region.fd).st_size < end:
            raise bad_request(
                f"{what}: shared memory region {quoted(where.region)} is smaller than registered (key {region.key!r})"
            )
