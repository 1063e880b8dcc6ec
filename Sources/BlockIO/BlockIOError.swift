import SystemPackage

/// Why an operation on a block device, a loop device or a file failed: the path, what was asked
/// (the system call, or the check that refused), the kernel's errno when it answered one, and
/// what undoing half-done work could not undo. One type for all of BlockIO, so that callers
/// match one shape (`error.errno == .noSpace`) whatever raised it.
public struct BlockIOError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Reason: Hashable, Sendable {
        /// A system call or ioctl failed with this errno (EEXIST from an exclusive create: the
        /// file was already there and was not touched; EOPNOTSUPP from fallocate: the file
        /// system cannot reserve blocks).
        case system(operation: String, Errno)
        case notABlockDevice
        /// The path is not a loop block device (major 7).
        case notALoopDevice
        /// `LOOP_CONFIGURE` (or `LOOP_SET_FD`) answered EBUSY for each of the `attempts` free
        /// devices `LOOP_CTL_GET_FREE` named: other programs bound them first, or one holds the
        /// free device open with O_EXCL.
        case noFreeLoopDevice(attempts: Int)
        /// A sysfs attribute did not hold what the kernel writes there.
        case unexpectedSysfs(String)
        /// A file was to grow to a size below its current size.
        case wouldShrink(current: Bytes, requested: Bytes)
        /// The size does not fit in `off_t`.
        case sizeOutOfRange(Bytes)
    }

    public var path: String
    public var reason: Reason
    /// What undoing the half-done work could not undo (a loop device left bound, a half-made
    /// file left behind), if anything.
    public var leftOver: String?

    public init(path: String, reason: Reason, leftOver: String? = nil) {
        self.path = path
        self.reason = reason
        self.leftOver = leftOver
    }

    public init(path: FilePath, reason: Reason, leftOver: String? = nil) {
        self.init(path: path.string, reason: reason, leftOver: leftOver)
    }

    init(_ path: String, _ operation: String, _ errno: Errno) {
        self.init(path: path, reason: .system(operation: operation, errno))
    }

    init(_ path: FilePath, _ operation: String, _ errno: Errno) {
        self.init(path: path.string, reason: .system(operation: operation, errno))
    }

    /// The kernel's errno, when a system call failed.
    public var errno: Errno? {
        if case .system(_, let errno) = reason { return errno }
        return nil
    }

    public var description: String {
        var text: String
        switch reason {
        case .system(let operation, let errno):
            text = "\(path): \(operation) failed: \(errno)"
        case .notABlockDevice:
            text = "\(path) is not a block device"
        case .notALoopDevice:
            text = "\(path) is not a loop device"
        case .noFreeLoopDevice(let attempts):
            text = "\(path): no free loop device: each of the \(attempts) free devices offered was busy (bound or claimed by another program first)"
        case .unexpectedSysfs(let content):
            text = "\(path): unexpected content \(content.debugDescription)"
        case .wouldShrink(let current, let requested):
            text = "\(path): cannot grow to \(requested): the file already has \(current)"
        case .sizeOutOfRange(let size):
            text = "\(path): size \(size) is too large for a file"
        }
        if let leftOver { text += "; undoing it failed too: \(leftOver)" }
        return text
    }
}
