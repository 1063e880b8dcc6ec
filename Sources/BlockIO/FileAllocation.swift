import CShims
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Backing files for loop devices and snapshot stores: made exclusively, sized, optionally with
/// every block reserved up front, and flushed to disk before the call returns.
public enum FileAllocation {
    /// Creates `path` as a new file of `size` bytes.
    ///
    /// The file is created with `O_CREAT | O_EXCL`, so an existing file (or symbolic link) at
    /// `path` fails with EEXIST and is left untouched. Its size is set with `ftruncate`; with
    /// `preallocate` the blocks are then reserved with `fallocate(fd, 0, 0, size)`, so that a
    /// full host file system cannot fail a later write through a loop device (a write into a
    /// hole of a sparse file needs a new block at that moment). Preallocation is never
    /// silently skipped: when the file system cannot do it (EOPNOTSUPP) or has no room
    /// (ENOSPC), the half-made file is removed and the error thrown. Without `preallocate` the
    /// file stays sparse and `fallocate` is not called.
    ///
    /// With `zeroFill`, the first `zeroFill` bytes (at most the size) are then written with
    /// zeros (see `writeZeros`).
    ///
    /// With `noCopyOnWrite`, the empty file gets FS_NOCOW_FL (`chattr +C`) before any block is
    /// allocated (the flag only holds for a file without data): on btrfs a write into the file
    /// then overwrites its block instead of allocating a new one, so that a full file system
    /// cannot fail it. A file system that refuses the flag fails the call.
    ///
    /// The file and then its directory are flushed with `fsync`, so that both the file's size
    /// and its name survive a crash. Any failure after the file was created removes it again.
    /// `permissions` are subject to the process's umask, as for any `open(2)` that creates.
    public static func create(_ path: FilePath, size: Bytes, preallocate: Bool, zeroFill: Bytes = .zero,
                              noCopyOnWrite: Bool = false,
                              permissions: FilePermissions = [.ownerReadWrite]) throws(BlockIOError) {
        guard let length = Int64(exactly: size.rawValue) else {
            throw BlockIOError(path: path, reason: .sizeOutOfRange(size))
        }
        let file: FileDescriptor
        switch openDescriptor(path.string, O_RDWR | O_CREAT | O_EXCL, permissions: mode_t(permissions.rawValue)) {
        case .success(let opened): file = opened
        case .failure(let error): throw BlockIOError(path, "open (create exclusively)", error)
        }

        var failure: BlockIOError?
        if noCopyOnWrite && snapstack_set_no_copy_on_write(file.rawValue) != 0 {
            failure = BlockIOError(path, "set no-copy-on-write (chattr +C)", Errno(rawValue: errno))
        } else if case .failure(let error) = retryingInterrupts({ ftruncate(file.rawValue, off_t(length)) }) {
            failure = BlockIOError(path, "ftruncate", error)
        } else if preallocate && length > 0,
                  case .failure(let error) = retryingInterrupts({ snapstack_fallocate(file.rawValue, 0, 0, length) }) {
            failure = BlockIOError(path, "fallocate", error)
        } else if let error = writeZeros(path, from: 0, to: min(length, Int64(clamping: zeroFill.rawValue))) {
            failure = error
        } else if case .failure(let error) = retryingInterrupts({ fsync(file.rawValue) }) {
            failure = BlockIOError(path, "fsync", error)
        }
        if let error = closeDescriptor(file), failure == nil {
            // Delayed write errors of some file systems surface at close; fsync has run.
            failure = BlockIOError(path, "close", error)
        }
        if failure == nil {
            do { try AtomicFile.syncDirectory(of: path) } catch { failure = error }
        }
        guard var failure else { return }
        if unlink(path.string) != 0 {
            failure.leftOver = "unlink of the half-made file failed: \(Errno(rawValue: errno))"
        }
        throw failure
    }

    /// Grows the existing file at `path` to `size` bytes with `ftruncate` (a smaller size is
    /// refused: this never cuts data off), and with `preallocate` reserves every block of the
    /// file, old holes included, with `fallocate(fd, 0, 0, size)`. When that fails the file is
    /// cut back to its former size, so it is left as it was apart from blocks now reserved.
    /// With `zeroFill`, the first `zeroFill` bytes of the new part are then written with zeros
    /// (see `writeZeros`): safe while a loop device is bound, which cannot reach past its old
    /// size until `Loop.refreshCapacity`.
    /// The file is flushed with `fsync`. A bound loop device sees the new size only after
    /// `Loop.refreshCapacity`.
    public static func grow(_ path: FilePath, to size: Bytes, preallocate: Bool,
                            zeroFill: Bytes = .zero) throws(BlockIOError) {
        guard let length = Int64(exactly: size.rawValue) else {
            throw BlockIOError(path: path, reason: .sizeOutOfRange(size))
        }
        let file: FileDescriptor
        switch openDescriptor(path.string, O_RDWR) {
        case .success(let opened): file = opened
        case .failure(let error): throw BlockIOError(path, "open", error)
        }

        var failure: BlockIOError?
        var current: Int64 = 0
        switch statDescriptor(file) {
        case .success(let status):
            current = Int64(status.st_size)
            if length < current {
                failure = BlockIOError(path: path, reason: .wouldShrink(current: Bytes(UInt64(current)), requested: size))
            }
        case .failure(let error):
            failure = BlockIOError(path, "fstat", error)
        }
        if failure == nil, length > current,
           case .failure(let error) = retryingInterrupts({ ftruncate(file.rawValue, off_t(length)) }) {
            failure = BlockIOError(path, "ftruncate", error)
        }
        if failure == nil, preallocate, length > 0,
           case .failure(let error) = retryingInterrupts({ snapstack_fallocate(file.rawValue, 0, 0, length) }) {
            failure = BlockIOError(path, "fallocate", error)
            if length > current,
               case .failure(let undo) = retryingInterrupts({ ftruncate(file.rawValue, off_t(current)) }) {
                failure?.leftOver = "ftruncate back to \(current) bytes failed: \(undo)"
            }
        }
        if failure == nil, length > current,
           let error = writeZeros(path, from: current, to: min(length, current + Int64(clamping: zeroFill.rawValue))) {
            failure = error
        }
        if failure == nil, case .failure(let error) = retryingInterrupts({ fsync(file.rawValue) }) {
            failure = BlockIOError(path, "fsync", error)
        }
        if let error = closeDescriptor(file), failure == nil {
            failure = BlockIOError(path, "close", error)
        }
        if let failure { throw failure }
    }

    /// Writes zeros over `[start, end)` of the file at `path` (rounded inwards to whole 4 KiB
    /// blocks) with direct I/O, so that the file system has those blocks allocated *and
    /// written*.
    ///
    /// Why: a block that `fallocate` reserved is "unwritten" (it reads as zeros without being
    /// read). The first write into it through a direct-I/O loop device makes ext4 and XFS
    /// convert the extent in a journal transaction, and the flush that dm-snapshot and dm-era
    /// send with every metadata commit then waits for that journal commit: measured on ext4,
    /// 4 KiB-chunk copy-on-write ran at less than half the speed into reserved blocks as into
    /// written ones. Written blocks are overwritten in place. Direct I/O keeps the zeros out of
    /// the page cache. The caller's `fsync` makes the extents durable.
    private static func writeZeros(_ path: FilePath, from start: Int64, to end: Int64) -> BlockIOError? {
        let block: Int64 = 4096
        let first = (start + block - 1) / block * block, last = end / block * block
        guard last > first else { return nil }
        let file: FileDescriptor
        switch openDescriptor(path.string, O_WRONLY | snapstack_O_DIRECT) {
        case .success(let opened): file = opened
        case .failure(let error): return BlockIOError(path, "open (direct I/O, to write zeros)", error)
        }
        defer { _ = closeDescriptor(file) }  // the caller's fsync of its own descriptor is what counts
        let bufferSize = 1 << 20
        let zeros = UnsafeMutableRawPointer.allocate(byteCount: bufferSize, alignment: Int(block))
        defer { zeros.deallocate() }
        zeros.initializeMemory(as: UInt8.self, repeating: 0, count: bufferSize)
        var offset = first
        while offset < last {
            let count = Int(min(Int64(bufferSize), last - offset))
            switch retryingInterrupts({ pwrite(file.rawValue, zeros, count, off_t(offset)) }) {
            case .success(let written) where written > 0: offset += Int64(written)
            case .success: return BlockIOError(path, "pwrite of zeros", .noSpace)
            case .failure(let error): return BlockIOError(path, "pwrite of zeros", error)
            }
        }
        return nil
    }
}
