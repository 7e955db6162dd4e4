"""A job's output file sent to a client from an offset while the job still writes it (for grun.stream_server): each
new piece as one frame of grun.stream's wire format, by sendfile past SMALL bytes (so the bytes never enter Python),
and what was sent dropped from the page cache past DROP_AFTER."""
import contextlib
import os
import socket

from .stream import HEADER

CHUNK = 4 << 20                        # largest data frame sent
SMALL = 64 << 10                       # below this, pread + one send is cheaper than sendfile
# Past DROP_AFTER bytes sent, a Tail tells the kernel, a DROP_BEHIND window at a time, that it is done
# with them: past the writeback threshold, a job's own writes got three times dearer (4 GiB to `| cat`:
# 626-735 MB/s, with this 791-1,036). DONTNEED starts writeback (no wait) and drops what is clean, so a
# window is advised twice: to write it, then one window later to drop it. A smaller output is left to
# the kernel (1 GiB: ~830 MB/s with this, ~1,080 without). The file stays whole: a re-attach from any
# offset reads it back from disk (invariant 3).
DROP_AFTER, DROP_BEHIND = 1 << 30, 64 << 20
# MSG_MORE lets the 5-byte header ride in the same segment as the sendfile payload.
_MSG_MORE = getattr(socket, "MSG_MORE", 0)


class Tail:
    """One spool file being tailed from an offset into frames of one type."""

    def __init__(self, path: str, offset: int, kind: bytes):
        self.path, self.kind, self.fd, self.name = path, kind, None, os.path.basename(path)
        self.seek(offset)

    def seek(self, offset: int) -> None:
        self.offset = offset
        self.behind = self.advised = offset + DROP_AFTER  # the drop-behind marks

    def pump(self, sock: socket.socket) -> int:
        """Send up to CHUNK new bytes as one frame; return how many."""
        if self.fd is None:
            try:
                self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:  # the reaper has not started the job yet
                return 0
        n = min(os.fstat(self.fd).st_size - self.offset, CHUNK)
        if 0 < n <= SMALL:
            data = os.pread(self.fd, n, self.offset)
            sock.sendall(HEADER.pack(self.kind, len(data)) + data)
            self.offset += len(data)
            return len(data)
        if n <= 0:
            return 0
        sock.sendall(HEADER.pack(self.kind, n), _MSG_MORE)
        end = self.offset + n  # the header promises n bytes, and the file only grows: sendfile delivers
        while self.offset < end:
            if not (k := os.sendfile(sock.fileno(), self.fd, self.offset, end - self.offset)):
                raise OSError(f"{self.path} shrank below offset {self.offset}")
            self.offset += k
        if self.offset - self.advised >= DROP_BEHIND:
            with contextlib.suppress(OSError):  # advice only
                os.posix_fadvise(self.fd, self.behind, self.offset - self.behind, os.POSIX_FADV_DONTNEED)
            self.behind, self.advised = self.advised, self.offset
        return n
