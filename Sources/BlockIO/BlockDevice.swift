import CShims
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// What the kernel says about a block device, read once through an open descriptor.
public struct BlockDeviceFacts: Hashable, Sendable {
    public var path: FilePath
    public var number: DeviceNumber
    /// `BLKGETSIZE64`.
    public var size: Bytes
    /// `BLKSSZGET`: the smallest unit the device can address; O_DIRECT buffers align to it.
    public var logicalBlockSize: Bytes
    /// `BLKPBSZGET`.
    public var physicalBlockSize: Bytes

    public var sectors: Sectors { Sectors(size.rawValue / Sectors.size) }

    public init(path: FilePath, number: DeviceNumber, size: Bytes, logicalBlockSize: Bytes, physicalBlockSize: Bytes) {
        self.path = path
        self.number = number
        self.size = size
        self.logicalBlockSize = logicalBlockSize
        self.physicalBlockSize = physicalBlockSize
    }
}

/// A failure to read a block device's facts, with the system's reason.
public struct BlockDeviceError: Error, Equatable, CustomStringConvertible {
    public enum Reason: Equatable, Sendable {
        case system(operation: String, Errno)
        case notABlockDevice
    }
    public var path: FilePath
    public var reason: Reason

    public init(path: FilePath, reason: Reason) {
        self.path = path
        self.reason = reason
    }

    public var description: String {
        switch reason {
        case .system(let operation, let errno):
            return "\(path): \(operation) failed: \(errno)"
        case .notABlockDevice:
            return "\(path) is not a block device"
        }
    }
}

extension BlockDeviceFacts {
    /// Opens `path` read-only and asks the kernel for its number, size and block sizes.
    /// Opening read-only never changes the device; it does count as an opener while it lasts.
    public static func read(_ path: FilePath) throws(BlockDeviceError) -> BlockDeviceFacts {
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.open(path, .readOnly, options: [.closeOnExec])
        } catch {
            throw BlockDeviceError(path: path, reason: .system(operation: "open", error as? Errno ?? .ioError))
        }
        defer { try? fd.close() }

        func check(_ result: Int32, _ operation: String) throws(BlockDeviceError) {
            if result != 0 {
                throw BlockDeviceError(path: path, reason: .system(operation: operation, Errno(rawValue: errno)))
            }
        }
        var st = stat()
        try check(fstat(fd.rawValue, &st), "fstat")
        guard (st.st_mode & S_IFMT) == S_IFBLK else {
            throw BlockDeviceError(path: path, reason: .notABlockDevice)
        }
        var size: UInt64 = 0
        try check(snapstack_blkgetsize64(fd.rawValue, &size), "BLKGETSIZE64")
        var logical: Int32 = 0
        try check(snapstack_blksszget(fd.rawValue, &logical), "BLKSSZGET")
        var physical: UInt32 = 0
        try check(snapstack_blkpbszget(fd.rawValue, &physical), "BLKPBSZGET")
        return BlockDeviceFacts(
            path: path, number: DeviceNumber(st.st_rdev), size: Bytes(size),
            logicalBlockSize: Bytes(UInt64(logical)), physicalBlockSize: Bytes(UInt64(physical)))
    }
}
