import CShims
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A block device queue's write-cache mode, `/sys/block/NAME/queue/write_cache`: whether the
/// device says it has a volatile cache, so that the block layer passes flushes and FUA writes
/// down to it ("write back") or completes them at once ("write through").
public enum WriteCache: String, Hashable, Sendable {
    case writeBack = "write back"
    case writeThrough = "write through"

    /// The mode of the device `number` (`/sys/dev/block/MAJ:MIN`); a partition has no queue of
    /// its own and answers with its disk's.
    public static func of(_ number: DeviceNumber) throws(Errno) -> WriteCache {
        let base = "/sys/dev/block/\(number.major):\(number.minor)"
        var result = readWholeFile(base + "/queue/write_cache")
        if case .failure(.noSuchFileOrDirectory) = result {
            // The link points at .../block/sda/sda1: ".." is the disk.
            result = readWholeFile(base + "/../queue/write_cache")
        }
        switch result {
        case .success(let bytes):
            guard let mode = WriteCache(rawValue: sysfsValue(bytes)) else { throw .invalidArgument }
            return mode
        case .failure(let error): throw error
        }
    }

    /// Sets the mode of the block device `name` (`/sys/block/NAME/queue/write_cache`). The
    /// kernel accepts either mode for any device; saying "write through" of a device that has
    /// a volatile cache makes the block layer drop its flushes, so callers decide on facts.
    public static func set(_ mode: WriteCache, ofDeviceNamed name: String) throws(Errno) {
        let path = "/sys/block/\(name)/queue/write_cache"
        let file: FileDescriptor
        switch openDescriptor(path, O_WRONLY) {
        case .success(let opened): file = opened
        case .failure(let error): throw error
        }
        defer { _ = closeDescriptor(file) }
        let text = mode.rawValue
        switch retryingInterrupts({ text.withCString { write(file.rawValue, $0, strlen($0)) } }) {
        case .success(let count) where count == text.utf8.count: return
        case .success: throw .ioError
        case .failure(let error): throw error
        }
    }
}

extension FileAllocation {
    /// Whether every byte of the file at `path` is in a block its file system has allocated and
    /// written (no hole, no reserved-but-unwritten extent), as `FS_IOC_FIEMAP` reports after a
    /// sync. A direct-I/O overwrite of such a file on ext4 or xfs changes no file-system
    /// metadata but its times. Throws when the file system cannot tell (EOPNOTSUPP).
    public static func isFullyWritten(_ path: FilePath) throws(BlockIOError) -> Bool {
        let file: FileDescriptor
        switch openDescriptor(path.string, O_RDONLY) {
        case .success(let opened): file = opened
        case .failure(let error): throw BlockIOError(path, "open", error)
        }
        defer { _ = closeDescriptor(file) }
        let size: UInt64
        switch statDescriptor(file) {
        case .success(let status): size = UInt64(status.st_size)
        case .failure(let error): throw BlockIOError(path, "fstat", error)
        }
        switch retryingInterrupts({ snapstack_fully_written(file.rawValue, size) }) {
        case .success(let answer): return answer == 1
        case .failure(let error): throw BlockIOError(path, "FS_IOC_FIEMAP", error)
        }
    }
}

extension Loop {
    /// Whether the bound loop device `device` does direct I/O to its backing file
    /// (`/sys/block/loopN/loop/dio`): the kernel may keep buffered I/O when asked for direct.
    public static func usesDirectIO(_ device: LoopDevice) throws(BlockIOError) -> Bool {
        let name = String(device.path.split(separator: "/").last ?? "")
        let path = "/sys/block/\(name)/loop/dio"
        switch readWholeFile(path) {
        case .success(let bytes):
            switch sysfsValue(bytes) {
            case "1": return true
            case "0": return false
            case let other: throw BlockIOError(path: path, reason: .unexpectedSysfs(other))
            }
        case .failure(let error): throw BlockIOError(path, "read", error)
        }
    }
}
