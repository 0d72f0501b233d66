// Blocking file-descriptor I/O.

#if canImport(Glibc)
import Glibc
#endif

/// Blocking I/O that retries on EINTR and short transfers.
public enum IO {
    /// Reads exactly `count` bytes; false on EOF or error.
    public static func readFully(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ count: Int) -> Bool {
        var done = 0
        while done < count {
            let n = read(fd, buffer + done, count - done)
            if n > 0 { done += n; continue }
            if n < 0 && errno == EINTR { continue }
            return false
        }
        return true
    }

    /// Writes all `count` bytes; false on error (errno says which).
    public static func writeFully(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Bool {
        var done = 0
        while done < count {
            let n = write(fd, buffer + done, count - done)
            if n > 0 { done += n; continue }
            if n < 0 && errno == EINTR { continue }
            return false
        }
        return true
    }

    public static func writeFully(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { raw in
            guard let base = raw.baseAddress else { return true }   // nothing to write
            return writeFully(fd, base, raw.count)
        }
    }

    /// Writes every byte the iovecs describe (the array is consumed in place); false on error.
    public static func writeFully(_ fd: Int32, _ iov: UnsafeMutablePointer<iovec>, _ count: Int) -> Bool {
        var first = 0
        while first < count {
            let batch = Int32(min(count - first, 1024))  // IOV_MAX
            let n = writev(fd, iov + first, batch)
            if n < 0 {
                if errno == EINTR { continue }
                return false
            }
            var left = n
            while left > 0 && first < count {
                let len = iov[first].iov_len
                if left >= len {
                    left -= len
                    first += 1
                } else {
                    iov[first].iov_base = iov[first].iov_base! + left
                    iov[first].iov_len = len - left
                    left = 0
                }
            }
            while first < count && iov[first].iov_len == 0 { first += 1 }
        }
        return true
    }

    /// A whole file, at most `limit` bytes of it (more is an EFBIG error).
    public static func readFile(_ path: String, limit: Int = .max) throws(PosixError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .lastError("open \(path)") }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw .lastError("read \(path)")
            }
            if n == 0 { return bytes }
            guard bytes.count + n <= limit else { throw .system("read \(path)", errno: EFBIG) }
            bytes += chunk[0..<n]
        }
    }

    /// A pipe whose both ends are close-on-exec.
    public static func makePipe() throws(PosixError) -> (read: Int32, write: Int32) {
        var fds: [Int32] = [0, 0]
        guard c_pipe2(&fds, O_CLOEXEC) == 0 else { throw .lastError("pipe2") }
        return (fds[0], fds[1])
    }

    /// Replies of a deep queue of big READs (nbdcopy: 64 × 256 KiB per connection) wait in the
    /// socket instead of blocking the writer each 200 KiB: a unix socket's send buffer is all the
    /// room there is between us and the client (measured: read-back 10-20% faster with 4 MiB).
    /// Privileged daemons may exceed net.core.wmem_max; others get what it allows. TCP keeps its
    /// autotuning, which a fixed SO_SNDBUF would turn off.
    public static func enlargeUnixSendBuffer(_ fd: Int32) {
        guard (try? Sockets.domain(of: fd)) == AF_UNIX else { return }
        var bytes: Int32 = 4 << 20
        let size = socklen_t(MemoryLayout<Int32>.size)
        if setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bytes, size) != 0 {
            _ = setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, size)
        }
    }

    /// TCP_NODELAY: replies leave at once instead of waiting for Nagle's timer.
    public static func setNoDelay(_ fd: Int32) {
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }
}
