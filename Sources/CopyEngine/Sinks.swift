import BlockIO
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

    /// How data reaches the image file.
    public enum WriteMode: Hashable, Sendable {
        /// Through the page cache; `finish` flushes it all (fsync).
        case buffered
        /// Through the page cache, but each write is handed to writeback at once
        /// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`) and, once on disk, dropped from the cache
        /// (`posix_fadvise(POSIX_FADV_DONTNEED)`), at most `writeBehindWindow` bytes behind: the
        /// copy neither floods the page cache (evicting the server's working set) nor leaves a
        /// large flush for `finish`.
        case writeBehind
        /// O_DIRECT from the engine's aligned buffers; pieces that are not 4096-aligned (a
        /// short last block) are written behind. Where the file system refuses O_DIRECT,
        /// everything is written behind (`directWrites` says which). About as fast as
        /// `.writeBehind` on ext4 (Tests/bench/copy-out.sh); not the default because O_DIRECT
        /// semantics vary more across the file systems backups land on (network, btrfs).
        case direct
    }

    /// Write-behind keeps at most this many bytes between "handed to writeback" and "on disk".
    public static let writeBehindWindow: UInt64 = 32 << 20
    /// Write-behind hands writes to writeback in batches of this many bytes: one call per
    /// batch, over the span the batch covers, so that scattered small writes (an incremental)
    /// do not each cost a system call and a tiny I/O of their own.
    public static let writeBehindBatch: UInt64 = 4 << 20

    public let path: FilePath
    public let zeroBlocks: ZeroBlocks
    public let writeMode: WriteMode
    public private(set) var bytesWritten: UInt64 = 0
    /// Bytes of zero blocks punched out (or, without hole punching, written as zeros).
    public private(set) var bytesPunched: UInt64 = 0
    /// Whether data goes out with O_DIRECT (`.direct`, when the file system takes it).
    public var directWrites: Bool { directFD != nil }
    private let fd: Int32
    private var directFD: Int32?
    private var canPunch = true
    /// Write-behind: the span and byte count of the writes not yet handed to writeback.
    private var batch: (start: UInt64, end: UInt64, bytes: UInt64)?
    /// Write-behind: spans handed to writeback, oldest first, not yet waited for.
    private var inFlight: [(start: UInt64, end: UInt64, bytes: UInt64)] = []
    private var inFlightBytes: UInt64 = 0

    /// Opens (creating, mode `permissions`) the image and sets its size to `size`.
    public init(path: FilePath, size: UInt64, zeroBlocks: ZeroBlocks,
                permissions: FilePermissions = [.ownerReadWrite],
                writeMode: WriteMode = .writeBehind) throws(CopyError) {
        self.path = path
        self.zeroBlocks = zeroBlocks
        self.writeMode = writeMode
        // Not through a symbolic link: the image directory may be writable by others, and this runs as root.
        var flags = O_WRONLY | O_CREAT | O_NOFOLLOW
        if zeroBlocks == .leaveHoles { flags |= O_TRUNC }
        switch openFile(path.string, flags, mode_t(permissions.rawValue)) {
        case .success(let descriptor): fd = descriptor
        case .failure(let error): throw CopyError("open", path.string, error)
        }
        if case .failure(let error) = retryingInterrupts({ ftruncate(fd, off_t(size)) }) {
            _ = closeFile(fd)
            throw CopyError("ftruncate", path.string, offset: size, error)
        }
        if writeMode == .direct {
            switch openFile(path.string, O_WRONLY | O_NOFOLLOW | snapstack_O_DIRECT) {
            case .success(let descriptor): directFD = descriptor
            case .failure(.invalidArgument): directFD = nil  // no O_DIRECT here: buffered
            case .failure(let error):
                _ = closeFile(fd)
                throw CopyError("open(O_DIRECT)", path.string, error)
            }
        }
    }

    deinit {
        if let directFD { _ = closeFile(directFD) }
        _ = closeFile(fd)
    }

    public func write(offset: UInt64, bytes: UnsafeRawBufferPointer, blocks: [BlockRecord]) throws {
        try forEachRun(offset: offset, bytes: bytes, blocks: blocks) { start, run, zero in
            if !zero {
                try writeData(run, at: start)
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
            try writeData(run, at: start)
            bytesPunched += UInt64(run.count)
        }
    }

    private func writeData(_ run: UnsafeRawBufferPointer, at start: UInt64) throws {
        let alignment = 4096
        if let directFD, start % UInt64(alignment) == 0, run.count % alignment == 0,
           Int(bitPattern: run.baseAddress) % alignment == 0 {
            if case .failure(let error) = pwriteFully(directFD, run, at: start) {
                throw CopyError("pwrite(O_DIRECT)", path.string, offset: start, error)
            }
            return
        }
        if case .failure(let error) = pwriteFully(fd, run, at: start) {
            throw CopyError("pwrite", path.string, offset: start, error)
        }
        if writeMode != .buffered { try writeBehind(start, UInt64(run.count)) }
    }

    /// Adds the range just written to the batch; a full batch is handed to writeback
    /// (`SYNC_FILE_RANGE_WRITE` over its span starts I/O for the dirty pages in it without
    /// waiting), and once more than the window is in flight the oldest spans are waited for.
    private func writeBehind(_ offset: UInt64, _ length: UInt64) throws {
        if let current = batch {
            batch = (min(current.start, offset), max(current.end, offset + length), current.bytes + length)
        } else {
            batch = (offset, offset + length, length)
        }
        if batch!.bytes >= SparseFileSink.writeBehindBatch { try kick() }
    }

    private func kick() throws {
        guard let span = batch else { return }
        batch = nil
        if case .failure(let error) = retryingInterrupts({
            snapstack_sync_file_range(fd, Int64(span.start), Int64(span.end - span.start), snapstack_SYNC_FILE_RANGE_WRITE)
        }) {
            throw CopyError("sync_file_range", path.string, offset: span.start, error)
        }
        inFlight.append(span)
        inFlightBytes += span.bytes
        while inFlightBytes > SparseFileSink.writeBehindWindow, !inFlight.isEmpty {
            try settle(inFlight.removeFirst())
        }
    }

    private func settle(_ span: (start: UInt64, end: UInt64, bytes: UInt64)) throws {
        inFlightBytes -= span.bytes
        let all = snapstack_SYNC_FILE_RANGE_WAIT_BEFORE | snapstack_SYNC_FILE_RANGE_WRITE | snapstack_SYNC_FILE_RANGE_WAIT_AFTER
        if case .failure(let error) = retryingInterrupts({
            snapstack_sync_file_range(fd, Int64(span.start), Int64(span.end - span.start), all)
        }) {
            throw CopyError("sync_file_range", path.string, offset: span.start, error)
        }
        // Clean pages now: dropping them loses nothing.
        _ = posix_fadvise(fd, off_t(span.start), off_t(span.end - span.start), POSIX_FADV_DONTNEED)
    }

    /// Waits for the write-behind ranges still in flight, then `fsync(2)`s data and metadata.
    public func finish() throws {
        try kick()
        while !inFlight.isEmpty { try settle(inFlight.removeFirst()) }
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
        if case .success(let status) = statDescriptor(fd) {
            if isBlockDevice(status) { device = DeviceNumber(status.st_rdev) } else { usesZeroOut = false }
        }
    }

    /// The block device the descriptor reaches (nil for a regular file): what a caller that
    /// checked a path compares with what it checked, since the path may have changed since.
    public private(set) var device: DeviceNumber?

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
