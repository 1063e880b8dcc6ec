import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

// The one system-call layer, under Loop, FileAllocation, DeviceUse and the copy engine. Every
// helper retries EINTR, continues short counts where a call can return them, and reads errno on
// the line right after the failing call — before anything else can overwrite it — and hands it
// back as a value, so that each caller can put it into its own typed error together with the
// path and the name of the operation.

/// Runs `call` (a system call that returns -1 and sets errno on failure) again for as long as a
/// signal interrupts it, and returns its result or the errno of the failure.
@inlinable
public func retryingInterrupts<T: FixedWidthInteger & SignedInteger>(_ call: () -> T) -> Result<T, Errno> {
    while true {
        let result = call()
        if result != -1 { return .success(result) }
        let code = Errno(rawValue: errno)
        if code != .interrupted { return .failure(code) }
    }
}

/// `open(2)` with O_CLOEXEC always added, retried on EINTR (opening a device can sleep
/// interruptibly in the driver's open method).
func openDescriptor(_ path: String, _ flags: Int32, permissions: mode_t = 0) -> Result<FileDescriptor, Errno> {
    retryingInterrupts { open(path, flags | O_CLOEXEC, permissions) }.map { FileDescriptor(rawValue: $0) }
}

/// `close(2)` without a retry: Linux releases the descriptor even when close reports EINTR, so
/// a second close could close a descriptor another thread has just been given.
func closeDescriptor(_ descriptor: FileDescriptor) -> Errno? {
    close(descriptor.rawValue) == 0 ? nil : Errno(rawValue: errno)
}

/// `fstat(2)` of an open descriptor.
func statDescriptor(_ descriptor: FileDescriptor) -> Result<stat, Errno> {
    var status = stat()
    return fstat(descriptor.rawValue, &status) == 0 ? .success(status) : .failure(Errno(rawValue: errno))
}

/// `stat(2)` of a path, following symbolic links (as /dev/disk/by-* and /dev/mapper names are).
func statPath(_ path: String) -> Result<stat, Errno> {
    var status = stat()
    return stat(path, &status) == 0 ? .success(status) : .failure(Errno(rawValue: errno))
}

public func isBlockDevice(_ status: stat) -> Bool { (status.st_mode & S_IFMT) == S_IFBLK }

/// The whole content of a small file (sysfs attributes, /proc tables), read until end of file.
/// procfs builds such files per read call, so short reads are normal and simply continue.
func readWholeFile(_ path: String) -> Result<[UInt8], Errno> {
    let descriptor: FileDescriptor
    switch openDescriptor(path, O_RDONLY) {
    case .success(let opened): descriptor = opened
    case .failure(let error): return .failure(error)
    }
    defer { _ = closeDescriptor(descriptor) }  // read-only: nothing to lose at close
    var content: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 16 << 10)
    while true {
        let result = chunk.withUnsafeMutableBytes { buffer in
            retryingInterrupts { read(descriptor.rawValue, buffer.baseAddress, buffer.count) }
        }
        switch result {
        case .success(0): return .success(content)
        case .success(let count): content.append(contentsOf: chunk[..<count])
        case .failure(let error): return .failure(error)
        }
    }
}

/// The names in a directory, without `.` and `..`, in the order the file system gives them.
func directoryEntries(_ path: String) -> Result<[String], Errno> {
    // glibc's opendir opens with O_CLOEXEC.
    guard let directory = opendir(path) else { return .failure(Errno(rawValue: errno)) }
    defer { closedir(directory) }
    var names: [String] = []
    while true {
        // readdir returns NULL both at the end and on failure; only errno tells them apart.
        errno = 0
        guard let entry = readdir(directory) else {
            let code = errno
            return code == 0 ? .success(names) : .failure(Errno(rawValue: code))
        }
        let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        if name != "." && name != ".." { names.append(name) }
    }
}

/// `readlink(2)`: the target of a symbolic link, such as /proc/self/fd/N.
func readSymbolicLink(_ path: String) -> Result<String, Errno> {
    var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
    let count = buffer.withUnsafeMutableBufferPointer { readlink(path, $0.baseAddress!, $0.count) }
    if count < 0 { return .failure(Errno(rawValue: errno)) }
    // A target as long as the buffer may have been cut short: refuse it rather than guess.
    if count >= buffer.count { return .failure(.fileNameTooLong) }
    return .success(String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self))
}

/// A sysfs attribute's text without the newline the kernel ends it with.
func sysfsValue(_ bytes: [UInt8]) -> String {
    var text = String(decoding: bytes, as: UTF8.self)
    if text.hasSuffix("\n") { text.removeLast() }
    return text
}

// For descriptors held as plain Int32 (the copy path).

/// `open(2)` with O_CLOEXEC added.
public func openFile(_ path: String, _ flags: Int32, _ permissions: mode_t = 0) -> Result<Int32, Errno> {
    retryingInterrupts { open(path, flags | O_CLOEXEC, permissions) }
}

public func statDescriptor(_ fd: Int32) -> Result<stat, Errno> {
    var status = stat()
    return fstat(fd, &status) == 0 ? .success(status) : .failure(Errno(rawValue: errno))
}

/// Reads until `buffer` is full or the file ends; returns the count read (less than
/// `buffer.count` only at the end of the file). A pread of a regular file or block device only
/// comes back short at the end or after a signal, so the loop is almost always one call.
public func preadFully(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) -> Result<Int, Errno> {
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
public func pwriteFully(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: UInt64) -> Result<Void, Errno> {
    writingAll(bytes) { done in pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset) + off_t(done)) }
}

/// Writes all of `bytes` to a stream (pipe, socket, terminal, file at its position); a pipe
/// takes at most its capacity per call, so short writes are the rule there.
public func writeFully(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Result<Void, Errno> {
    writingAll(bytes) { done in write(fd, bytes.baseAddress! + done, bytes.count - done) }
}

/// Calls `write` (given the count written so far) until all of `bytes` is written. A write of
/// nothing is the kernel's way of saying nothing fits.
private func writingAll(_ bytes: UnsafeRawBufferPointer, _ write: (_ done: Int) -> Int) -> Result<Void, Errno> {
    var done = 0
    while done < bytes.count {
        switch retryingInterrupts({ write(done) }) {
        case .success(0): return .failure(.noSpace)
        case .success(let count): done += count
        case .failure(let error): return .failure(error)
        }
    }
    return .success(())
}

/// `writev(2)` of all `vectors` to a stream, continuing after short writes by advancing the
/// vectors in place. At most IOV_MAX vectors go into one call.
public func writevFully(_ fd: Int32, _ vectors: inout [iovec]) -> Result<Void, Errno> {
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
public func syncDescriptor(_ fd: Int32) -> Result<Void, Errno> {
    switch retryingInterrupts({ fsync(fd) }) {
    case .success: return .success(())
    case .failure(.invalidArgument): return .success(())
    case .failure(let error): return .failure(error)
    }
}

/// `close(2)` without a retry: Linux releases the descriptor even when close reports EINTR.
public func closeFile(_ fd: Int32) -> Errno? {
    close(fd) == 0 ? nil : Errno(rawValue: errno)
}

public func isRegularFile(_ status: stat) -> Bool { (status.st_mode & S_IFMT) == S_IFREG }

/// Monotonic nanoseconds (CLOCK_MONOTONIC): immune to wall-clock steps.
public func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}

/// Sleeps for `nanoseconds` (nanosleep, continued after signals).
public func sleepNanoseconds(_ nanoseconds: UInt64) {
    var request = timespec(tv_sec: Int(nanoseconds / 1_000_000_000), tv_nsec: Int(nanoseconds % 1_000_000_000))
    var remaining = timespec()
    while nanosleep(&request, &remaining) == -1 && errno == EINTR {
        request = remaining
    }
}
