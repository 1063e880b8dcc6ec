import CShims
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Calls `body` once per maximal run of blocks that are all zero or all data, with the run's
/// offset, its bytes and whether it is zero.
func forEachRun(offset: UInt64, bytes: UnsafeRawBufferPointer, blocks: [BlockRecord],
                _ body: (UInt64, UnsafeRawBufferPointer, Bool) throws -> Void) rethrows {
    var start = 0
    var position = 0
    var runIsZero = blocks.first?.isZero ?? false
    for block in blocks {
        if block.isZero != runIsZero {
            try body(offset + UInt64(start), UnsafeRawBufferPointer(rebasing: bytes[start..<position]), runIsZero)
            start = position
            runIsZero = block.isZero
        }
        position += block.length
    }
    if position > start {
        try body(offset + UInt64(start), UnsafeRawBufferPointer(rebasing: bytes[start..<position]), runIsZero)
    }
}

/// An image file that mirrors the source: each data block is written at its own offset, zero
/// blocks become holes. The file's size is set to the source's size up front (`ftruncate`), so
/// trailing zeros are holes too.
public final class SparseFileSink: CopySink {
    /// What happens to zero blocks.
    public enum ZeroBlocks: Hashable, Sendable {
        /// A new image: the file is created empty (an existing one is truncated to nothing
        /// first), so a zero block written nowhere is already a hole.
        case leaveHoles
        /// An existing image updated in place (an incremental export): its content is kept, and
        /// a block that became zero is punched out with
        /// `fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)`; where the file system cannot
        /// punch holes (EOPNOTSUPP) zeros are written instead.
        case punchHoles
    }

    public let path: FilePath
    public let zeroBlocks: ZeroBlocks
    public private(set) var bytesWritten: UInt64 = 0
    /// Bytes of zero blocks punched out (or, without hole punching, written as zeros).
    public private(set) var bytesPunched: UInt64 = 0
    private let fd: Int32
    private var canPunch = true

    /// Opens (creating, mode `permissions`) the image and sets its size to `size`.
    public init(path: FilePath, size: UInt64, zeroBlocks: ZeroBlocks,
                permissions: FilePermissions = [.ownerReadWrite]) throws(CopyError) {
        self.path = path
        self.zeroBlocks = zeroBlocks
        var flags = O_WRONLY | O_CREAT
        if zeroBlocks == .leaveHoles { flags |= O_TRUNC }
        switch openFile(path.string, flags, mode_t(permissions.rawValue)) {
        case .success(let descriptor): fd = descriptor
        case .failure(let error): throw CopyError("open", path.string, error)
        }
        if case .failure(let error) = retryingInterrupts({ ftruncate(fd, off_t(size)) }) {
            _ = closeFile(fd)
            throw CopyError("ftruncate", path.string, offset: size, error)
        }
    }

    deinit { _ = closeFile(fd) }

    public func write(offset: UInt64, bytes: UnsafeRawBufferPointer, blocks: [BlockRecord]) throws {
        try forEachRun(offset: offset, bytes: bytes, blocks: blocks) { start, run, zero in
            if !zero {
                if case .failure(let error) = pwriteFully(fd, run, at: start) {
                    throw CopyError("pwrite", path.string, offset: start, error)
                }
                bytesWritten += UInt64(run.count)
                return
            }
            guard zeroBlocks == .punchHoles else { return }
            if canPunch {
                let mode = snapstack_FALLOC_FL_PUNCH_HOLE | snapstack_FALLOC_FL_KEEP_SIZE
                switch retryingInterrupts({ snapstack_fallocate(fd, mode, Int64(start), Int64(run.count)) }) {
                case .success:
                    bytesPunched += UInt64(run.count)
                    return
                case .failure(.notSupported):  // ENOTSUP == EOPNOTSUPP on Linux
                    canPunch = false
                case .failure(let error):
                    throw CopyError("fallocate(PUNCH_HOLE)", path.string, offset: start, error)
                }
            }
            // The run is zeros already: writing it is the fallback.
            if case .failure(let error) = pwriteFully(fd, run, at: start) {
                throw CopyError("pwrite", path.string, offset: start, error)
            }
            bytesPunched += UInt64(run.count)
        }
    }

    /// `fsync(2)`.
    public func finish() throws {
        if case .failure(let error) = syncDescriptor(fd) { throw CopyError("fsync", path.string, error) }
    }
}

/// Every byte of the image in order, zeros included, to a stream (a pipe, stdout): for
/// `export --to -` of a full image. Gaps between writes and the tail up to `size` are filled
/// with zeros, so extents that skip holes still give the whole image.
///
/// A reader that goes away makes the write fail with EPIPE; the sink sets SIGPIPE to ignored
/// (unless told not to), so that this arrives as an error instead of killing the process.
public final class RawStreamSink: CopySink {
    public let name: String
    public let size: UInt64?
    public private(set) var bytesWritten: UInt64 = 0
    private let fd: Int32
    private let zeros = AlignedBuffers(count: 1, size: 64 << 10, alignment: 4096)

    /// Writes to `descriptor` (not closed by the sink); `name` is what errors call it.
    public init(descriptor: FileDescriptor, name: String = "stdout", size: UInt64? = nil,
                ignoreSIGPIPE: Bool = true) {
        self.fd = descriptor.rawValue
        self.name = name
        self.size = size
        if ignoreSIGPIPE { signal(SIGPIPE, SIG_IGN) }
    }

    /// Bytes written so far: the stream offset.
    public var position: UInt64 { bytesWritten }

    public func write(offset: UInt64, bytes: UnsafeRawBufferPointer, blocks: [BlockRecord]) throws {
        guard offset >= bytesWritten else {
            throw CopyError(operation: "write", path: name, offset: offset,
                            reason: .invalidRequest("write at \(offset) after \(bytesWritten) bytes: a stream only goes forward"))
        }
        try writeZeros(upTo: offset)
        if case .failure(let error) = writeFully(fd, bytes) {
            throw CopyError("write", name, offset: offset, error)
        }
        bytesWritten += UInt64(bytes.count)
    }

    /// Pads with zeros up to `size` and, for a regular file, `fsync`s.
    public func finish() throws {
        if let size { try writeZeros(upTo: size) }
        if case .failure(let error) = syncDescriptor(fd) { throw CopyError("fsync", name, error) }
    }

    private func writeZeros(upTo end: UInt64) throws {
        guard end > bytesWritten else { return }
        try zeros.withBuffer(0) { buffer throws in
            // Up to 16 vectors over the same zero buffer: 1 MiB per writev.
            while bytesWritten < end {
                let count = min(end - bytesWritten, UInt64(16 * buffer.count))
                var vectors: [iovec] = []
                var left = Int(count)
                while left > 0 {
                    let piece = min(left, buffer.count)
                    vectors.append(iovec(iov_base: buffer.baseAddress, iov_len: piece))
                    left -= piece
                }
                if case .failure(let error) = writevFully(fd, &vectors) {
                    throw CopyError("writev", name, offset: bytesWritten, error)
                }
                bytesWritten += count
            }
        }
    }
}

/// A block device written at the source's offsets: for restore. Zero runs are zeroed with
/// `BLKZEROOUT` (the device may unmap them or write zeros, without sending zeros over the bus);
/// where that ioctl is refused (a regular file, or a device without support) zeros are written.
public final class BlockDeviceSink: CopySink {
    public let path: FilePath
    public private(set) var bytesWritten: UInt64 = 0
    /// Bytes of zero runs zeroed (by BLKZEROOUT or by writing zeros).
    public private(set) var bytesZeroed: UInt64 = 0
    /// Whether BLKZEROOUT did the zeroing (false once it was refused).
    public private(set) var usesZeroOut = true
    private let fd: Int32

    /// Opens `path` write-only; with `exclusive`, `O_EXCL` makes the open fail with EBUSY while
    /// the device is mounted or held, and keeps others from claiming it during the restore.
    public init(path: FilePath, exclusive: Bool = true) throws(CopyError) {
        self.path = path
        var flags = O_WRONLY
        if exclusive { flags |= O_EXCL }
        switch openFile(path.string, flags) {
        case .success(let descriptor): fd = descriptor
        case .failure(let error): throw CopyError("open", path.string, error)
        }
        if case .success(let status) = statDescriptor(fd), !isBlockDevice(status) { usesZeroOut = false }
    }

    deinit { _ = closeFile(fd) }

    public func write(offset: UInt64, bytes: UnsafeRawBufferPointer, blocks: [BlockRecord]) throws {
        try forEachRun(offset: offset, bytes: bytes, blocks: blocks) { start, run, zero in
            if zero && usesZeroOut {
                switch retryingInterrupts({ snapstack_blkzeroout(fd, start, UInt64(run.count)) }) {
                case .success:
                    bytesZeroed += UInt64(run.count)
                    return
                case .failure(.notSupported),
                     .failure(.operationNotSupportedByDevice), .failure(.inappropriateIOCTLForDevice):
                    usesZeroOut = false
                case .failure(let error):
                    throw CopyError("BLKZEROOUT", path.string, offset: start, error)
                }
            }
            if case .failure(let error) = pwriteFully(fd, run, at: start) {
                throw CopyError("pwrite", path.string, offset: start, error)
            }
            if zero { bytesZeroed += UInt64(run.count) } else { bytesWritten += UInt64(run.count) }
        }
    }

    /// `fsync(2)`: the device's cache is flushed too.
    public func finish() throws {
        if case .failure(let error) = syncDescriptor(fd) { throw CopyError("fsync", path.string, error) }
    }
}
