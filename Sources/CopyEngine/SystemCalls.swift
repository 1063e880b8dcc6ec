import CShims
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

// Every syscall of the copy path goes through one of these: EINTR is retried, short counts
// are continued, and errno is read on the line after the failing call, before anything else
// can overwrite it.

@inline(__always)
func retryingInterrupts<T: FixedWidthInteger & SignedInteger>(_ call: () -> T) -> Result<T, Errno> {
    while true {
        let result = call()
        if result != -1 { return .success(result) }
        let code = Errno(rawValue: errno)
        if code != .interrupted { return .failure(code) }
    }
}

/// `open(2)` with O_CLOEXEC added.
func openFile(_ path: String, _ flags: Int32, _ permissions: mode_t = 0) -> Result<Int32, Errno> {
    retryingInterrupts { open(path, flags | O_CLOEXEC, permissions) }
}

func statDescriptor(_ fd: Int32) -> Result<stat, Errno> {
    var status = stat()
    return fstat(fd, &status) == 0 ? .success(status) : .failure(Errno(rawValue: errno))
}

/// Reads until `buffer` is full or the file ends; returns the count read (less than
/// `buffer.count` only at the end of the file). A pread of a regular file or block device only
/// comes back short at the end or after a signal, so the loop is almost always one call.
func preadFully(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) -> Result<Int, Errno> {
    var done = 0
    while done < buffer.count {
        let result = retryingInterrupts {
            pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
        }
        switch result {
        case .success(0): return .success(done)
        case .success(let count): done += count
        case .failure(let error): return .failure(error)
        }
    }
    return .success(done)
}

/// Writes all of `bytes` at `offset`, continuing short writes.
func pwriteFully(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: UInt64) -> Result<Void, Errno> {
    var done = 0
    while done < bytes.count {
        let result = retryingInterrupts {
            pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset) + off_t(done))
        }
        switch result {
        case .success(0): return .failure(.noSpace)  // the kernel's way of saying nothing fits
        case .success(let count): done += count
        case .failure(let error): return .failure(error)
        }
    }
    return .success(())
}

/// Writes all of `bytes` to a stream (pipe, socket, terminal, file at its position); a pipe
/// takes at most its capacity per call, so short writes are the rule there.
func writeFully(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Result<Void, Errno> {
    var done = 0
    while done < bytes.count {
        let result = retryingInterrupts { write(fd, bytes.baseAddress! + done, bytes.count - done) }
        switch result {
        case .success(0): return .failure(.noSpace)
        case .success(let count): done += count
        case .failure(let error): return .failure(error)
        }
    }
    return .success(())
}

/// `writev(2)` of all `vectors` to a stream, continuing after short writes by advancing the
/// vectors in place. At most IOV_MAX vectors go into one call.
func writevFully(_ fd: Int32, _ vectors: inout [iovec]) -> Result<Void, Errno> {
    let maxVectors = 1024  // IOV_MAX on Linux
    var first = 0
    while first < vectors.count {
        if vectors[first].iov_len == 0 { first += 1; continue }
        let count = min(vectors.count - first, maxVectors)
        let result = vectors.withUnsafeBufferPointer { all in
            retryingInterrupts { writev(fd, all.baseAddress! + first, Int32(count)) }
        }
        switch result {
        case .success(0): return .failure(.noSpace)
        case .success(var written):
            while written > 0 {
                let length = vectors[first].iov_len
                if written >= length {
                    written -= length
                    vectors[first].iov_len = 0
                    first += 1
                } else {
                    vectors[first].iov_base = vectors[first].iov_base! + written
                    vectors[first].iov_len = length - written
                    written = 0
                }
            }
        case .failure(let error): return .failure(error)
        }
    }
    return .success(())
}

/// `fsync(2)`. EINVAL means the descriptor is a pipe, socket or terminal: nothing to sync.
func syncDescriptor(_ fd: Int32) -> Result<Void, Errno> {
    switch retryingInterrupts({ fsync(fd) }) {
    case .success: return .success(())
    case .failure(.invalidArgument): return .success(())
    case .failure(let error): return .failure(error)
    }
}

/// `close(2)` without a retry: Linux releases the descriptor even when close reports EINTR.
func closeFile(_ fd: Int32) -> Errno? {
    close(fd) == 0 ? nil : Errno(rawValue: errno)
}

func isBlockDevice(_ status: stat) -> Bool { (status.st_mode & S_IFMT) == S_IFBLK }
func isRegularFile(_ status: stat) -> Bool { (status.st_mode & S_IFMT) == S_IFREG }

/// Monotonic nanoseconds (CLOCK_MONOTONIC): immune to wall-clock steps.
func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}

/// Sleeps for `nanoseconds` (nanosleep, continued after signals).
func sleepNanoseconds(_ nanoseconds: UInt64) {
    var request = timespec(tv_sec: Int(nanoseconds / 1_000_000_000), tv_nsec: Int(nanoseconds % 1_000_000_000))
    var remaining = timespec()
    while nanosleep(&request, &remaining) == -1 && errno == EINTR {
        request = remaining
    }
}
