import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

// The plumbing under Loop, FileAllocation and DeviceUse. Every helper reads errno on the line
// right after the failing call — before anything else can overwrite it — and hands it back as a
// value, so that each caller can put it into its own typed error together with the path and
// the name of the operation.

/// Runs `call` (a system call that returns -1 and sets errno on failure) again for as long as a
/// signal interrupts it, and returns its result or the errno of the failure.
func retryingInterrupts<T: FixedWidthInteger & SignedInteger>(_ call: () -> T) -> Result<T, Errno> {
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

func isBlockDevice(_ status: stat) -> Bool { (status.st_mode & S_IFMT) == S_IFBLK }

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
