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

extension BlockDeviceFacts {
    /// Opens `path` read-only and asks the kernel for its number, size and block sizes.
    /// Opening read-only never changes the device; it does count as an opener while it lasts.
    public static func read(_ path: FilePath) throws(BlockIOError) -> BlockDeviceFacts {
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.open(path, .readOnly, options: [.closeOnExec])
        } catch {
            throw BlockIOError(path: path, reason: .system(operation: "open", error as? Errno ?? .ioError))
        }
        defer { try? fd.close() }

        func check(_ result: Int32, _ operation: String) throws(BlockIOError) {
            if result != 0 {
                throw BlockIOError(path: path, reason: .system(operation: operation, Errno(rawValue: errno)))
            }
        }
        var st = stat()
        try check(fstat(fd.rawValue, &st), "fstat")
        guard (st.st_mode & S_IFMT) == S_IFBLK else {
            throw BlockIOError(path: path, reason: .notABlockDevice)
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

/// The first bytes of a block device, where filesystems keep their superblocks.
public enum DeviceHead {
    /// Reads the first `count` bytes (at most 64 KiB) of the device at `path` with O_DIRECT,
    /// past the page cache of its node: another node of the same disk (a dm device over it)
    /// may have written them since this node's cache was filled.
    public static func read(_ path: String, count: Int) throws -> [UInt8] {
        // A whole number of 4 KiB blocks, aligned to 4 KiB: right for any logical block size.
        let length = max(4096, (min(count, 65536) + 4095) / 4096 * 4096)
        let descriptor: FileDescriptor
        switch openDescriptor(path, O_RDONLY | snapstack_O_DIRECT) {
        case .success(let opened): descriptor = opened
        case .failure(let errno): throw BlockIOError(path, "open", errno)
        }
        defer { _ = closeDescriptor(descriptor) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: length, alignment: 4096)
        defer { buffer.deallocate() }
        switch retryingInterrupts({ pread(descriptor.rawValue, buffer.baseAddress, length, 0) }) {
        case .success(let read): return Array(buffer.prefix(min(read, count)))
        case .failure(let errno): throw BlockIOError(path, "read", errno)
        }
    }

    /// Writes `bytes` (at most 4 KiB) over the 4 KiB of the device at `path` from `offset` (a
    /// multiple of 4 KiB), the rest zeroed, with O_DIRECT and O_SYNC: on the disk when this
    /// returns.
    public static func overwrite(_ path: String, at offset: UInt64 = 0, with bytes: [UInt8]) throws {
        guard bytes.count <= 4096, offset % 4096 == 0, offset <= UInt64(Int64.max) - 4096 else {
            throw BlockIOError(path, "write", .invalidArgument)
        }
        let descriptor: FileDescriptor
        switch openDescriptor(path, O_WRONLY | O_SYNC | snapstack_O_DIRECT) {
        case .success(let opened): descriptor = opened
        case .failure(let errno): throw BlockIOError(path, "open", errno)
        }
        defer { _ = closeDescriptor(descriptor) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
        buffer.copyBytes(from: bytes)
        switch retryingInterrupts({ pwrite(descriptor.rawValue, buffer.baseAddress, 4096, off_t(offset)) }) {
        case .success(4096): return
        case .success: throw BlockIOError(path, "write", .ioError)
        case .failure(let errno): throw BlockIOError(path, "write", errno)
        }
    }
}
