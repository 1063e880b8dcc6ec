import BlockIO
import CShims
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

// The copy-out core: O_DIRECT reads into owned aligned buffers, zero detection, XXH3-128 block
// digests, rate limit, progress and cancel, handing blocks in ascending order to a sink.

/// How a copy reads.
public struct CopyOptions: Hashable, Sendable {
    /// The digest and zero-detection granularity (a multiple of the source's logical block size).
    public var blockSize: Int
    /// The largest single read; adjacent extents are merged and cut into reads of this size.
    /// Rounded down to a multiple of `blockSize`. Large reads matter: on a loop device over a
    /// virtio disk, 4 MiB reads with 4 in flight read dense data about twice as fast as 1 MiB
    /// reads with 2 in flight (Tests/bench/copy-out.sh).
    public var ioSize: Int = 4 << 20
    /// How many buffers of `ioSize` exist: the copy's whole data memory is queueDepth × ioSize
    /// (32 MiB by default), whatever the size of the source.
    public var queueDepth: Int = 8
    /// How many threads read at once (each read is one I/O in flight). At most `queueDepth`;
    /// the other buffers let the readers run ahead of a slower sink.
    public var readers: Int = 4
    /// Bytes per second read from the source, on average; nil for no limit.
    public var maxRate: UInt64? = nil
    /// Read with O_DIRECT (bypassing and not polluting the page cache). When the file system
    /// refuses it (EINVAL, e.g. tmpfs before Linux 6.6) the engine reads buffered and says so in
    /// `CopyStatistics.directIO`.
    public var directIO: Bool = true

    public init(blockSize: Int, ioSize: Int = 4 << 20, queueDepth: Int = 8, readers: Int = 4,
                maxRate: UInt64? = nil, directIO: Bool = true) {
        self.blockSize = blockSize
        self.ioSize = ioSize
        self.queueDepth = queueDepth
        self.readers = readers
        self.maxRate = maxRate
        self.directIO = directIO
    }
}

/// What a copy did.
public struct CopyStatistics: Hashable, Sendable {
    /// Bytes read from the source (the requested extents).
    public var bytesRead: UInt64 = 0
    /// Bytes the sink wrote (`CopySink.bytesWritten`): data only, not holes or zeroed ranges.
    public var bytesWritten: UInt64 = 0
    /// Bytes in all-zero blocks.
    public var zeroBytes: UInt64 = 0
    /// Blocks handed to `onBlock` and the sink.
    public var blocks: UInt64 = 0
    /// Read calls, after merging adjacent extents.
    public var reads: Int = 0
    public var seconds: Double = 0
    /// Whether the source was read with O_DIRECT.
    public var directIO: Bool = false
    /// Data buffers allocated for the copy (`queueDepth`) and their total size: the bound on
    /// the copy's memory, independent of the source's size.
    public var bufferCount: Int = 0
    public var bufferBytes: Int = 0
}

/// Receives the copied blocks. The engine calls `write` in ascending offset order, from the
/// thread that called `run`, once per read (a run of adjacent blocks); `finish` is the caller's
/// to call once the copy succeeded (the engine never calls it, so that a failed or cancelled
/// copy does not seal a half-written target).
public protocol CopySink: AnyObject {
    /// `bytes` holds the blocks `blocks` (in order, contiguous from `offset`) and is valid only
    /// during the call.
    func write(offset: UInt64, bytes: UnsafeRawBufferPointer, blocks: [BlockRecord]) throws
    /// Makes what was written durable (fsync) or ends the stream.
    func finish() throws
    /// Bytes of data written to the target so far (holes and zeroed ranges not counted).
    var bytesWritten: UInt64 { get }
}

extension CopySink {
    public var bytesWritten: UInt64 { 0 }
}

/// A sink that keeps nothing: for re-reading an image to verify its digests (`onBlock`).
public final class NullSink: CopySink {
    public init() {}
    public func write(offset: UInt64, bytes: UnsafeRawBufferPointer, blocks: [BlockRecord]) throws {}
    public func finish() throws {}
}

/// Copies extents of a block device or regular file to a `CopySink`.
///
/// Reader threads (`readers`) take the next planned read, claim a free buffer (there are
/// `queueDepth`), `pread(2)` it (O_DIRECT when possible), detect zero blocks and digest every
/// block with `XXH3_128bits`; the calling thread takes the filled buffers back in offset order,
/// calls `onBlock` for each block, hands the run to the sink and returns the buffer to the pool.
/// Reading, digesting and writing overlap; memory stays at queueDepth × ioSize.
public final class CopyEngine {
    public let source: FilePath
    public let options: CopyOptions
    /// `BLKGETSIZE64` for a block device, `st_size` for a file.
    public let sourceSize: UInt64
    /// The O_DIRECT alignment: `BLKSSZGET` for a block device, 4096 for a file.
    public let logicalBlockSize: Int
    public let sourceIsBlockDevice: Bool
    /// Whether reads bypass the page cache (false after a refused O_DIRECT).
    public private(set) var directIO: Bool
    /// The time source of the rate limit; tests put a virtual clock here.
    public var clock: any CopyClock = SystemClock()
    private let fd: Int32
    private let ioSize: Int

    /// Opens `source` read-only (`O_RDONLY|O_DIRECT`), reads its size and alignment, and probes
    /// one aligned read: a file system that refuses O_DIRECT answers EINVAL at open or at the
    /// first read, and the engine then reads buffered (`POSIX_FADV_SEQUENTIAL`) instead.
    public init(source: FilePath, options: CopyOptions) throws(CopyError) {
        let path = source.string
        self.source = source
        self.options = options
        var flags = O_RDONLY
        if options.directIO { flags |= snapstack_O_DIRECT }
        var opened = openFile(path, flags)
        var direct = options.directIO
        if direct, case .failure(.invalidArgument) = opened {
            direct = false
            opened = openFile(path, O_RDONLY)
        }
        let fd: Int32
        switch opened {
        case .success(let descriptor): fd = descriptor
        case .failure(let error): throw CopyError("open", path, error)
        }
        var keep = false
        defer { if !keep { _ = closeFile(fd) } }

        let status: stat
        switch statDescriptor(fd) {
        case .success(let value): status = value
        case .failure(let error): throw CopyError("fstat", path, error)
        }
        if isBlockDevice(status) {
            let facts: BlockDeviceFacts
            do { facts = try BlockDeviceFacts.read(source) } catch {
                if case .system(let operation, let errno) = error.reason { throw CopyError(operation, path, errno) }
                throw CopyError(operation: "open", path: path, reason: .unsupportedSource)
            }
            sourceSize = facts.size.rawValue
            logicalBlockSize = Int(facts.logicalBlockSize.rawValue)
            sourceIsBlockDevice = true
        } else if isRegularFile(status) {
            sourceSize = UInt64(status.st_size)
            logicalBlockSize = 4096
            sourceIsBlockDevice = false
        } else {
            throw CopyError(operation: "open", path: path, reason: .unsupportedSource)
        }

        let block = options.blockSize
        guard block > 0, block % logicalBlockSize == 0 else {
            throw .invalid(path, "block size \(block) is not a positive multiple of the source's alignment (\(logicalBlockSize) bytes)")
        }
        guard options.queueDepth >= 1, options.readers >= 1 else {
            throw .invalid(path, "queue depth and readers must be at least 1")
        }
        guard options.maxRate != 0 else { throw .invalid(path, "a rate limit of 0 bytes/s would never finish") }
        ioSize = max(block, options.ioSize / block * block)

        if direct && sourceSize > 0 {
            // Some file systems accept O_DIRECT at open and refuse it at the first read.
            let probe = AlignedBuffers(count: 1, size: logicalBlockSize, alignment: logicalBlockSize)
            let result = probe.withBuffer(0) { preadFully(fd, $0, at: 0) }
            if case .failure(let error) = result {
                guard error == .invalidArgument else { throw CopyError("pread", path, offset: 0, error) }
                let current = fcntl(fd, F_GETFL)
                if current == -1 || fcntl(fd, F_SETFL, current & ~snapstack_O_DIRECT) == -1 {
                    throw CopyError("fcntl(F_SETFL)", path, Errno(rawValue: errno))
                }
                direct = false
            }
        }
        if !direct {
            // Buffered reads of a large sequential copy: read ahead aggressively.
            _ = posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL)
        }
        directIO = direct
        self.fd = fd
        keep = true
    }

    deinit { _ = closeFile(fd) }

    /// The whole source as one extent.
    public var wholeSource: [Extent] { sourceSize == 0 ? [] : [Extent(offset: 0, length: sourceSize)] }

    /// The number of blocks of the source (the last may be short).
    public var blockCount: UInt64 {
        let block = UInt64(options.blockSize)
        return (sourceSize + block - 1) / block
    }

    /// Copies `extents` into `sink`.
    ///
    /// `onBlock` sees every block, in order, before the sink writes it; an error it throws stops
    /// the copy and is rethrown. `progress` is called after each write. `cancel` is checked
    /// before every read and every write; a raised flag ends the copy with a `CopyError` whose
    /// `isCancelled` is true. The sink's `finish` is not called.
    public func run(extents: [Extent], into sink: CopySink,
                    onBlock: (BlockRecord) throws -> Void = { _ in },
                    progress: ((CopyProgress) -> Void)? = nil,
                    cancel: CancellationFlag? = nil) throws -> CopyStatistics {
        let path = source.string
        let reads = try CopyEngine.plan(extents, sourceSize: sourceSize, blockSize: options.blockSize,
                                        ioSize: ioSize, path: path)
        let total = reads.reduce(UInt64(0)) { $0 + UInt64($1.length) }
        let start = monotonicNanoseconds()
        let depth = max(1, min(options.queueDepth, reads.count))
        let pool = SharedBuffers(count: depth, size: ioSize, alignment: logicalBlockSize)
        let limiter = options.maxRate.map {
            RateLimiter(bytesPerSecond: $0, burst: UInt64(ioSize), clock: clock)
        }
        let pipeline = Pipeline(slots: depth, reads: reads)
        let context = ReaderContext(fd: fd, path: path, blockSize: options.blockSize,
                                    alignment: logicalBlockSize, directIO: directIO,
                                    pool: pool, pipeline: pipeline, limiter: limiter, cancel: cancel)
        var threads: [JoinableThread] = []
        for _ in 0..<min(options.readers, depth) {
            switch JoinableThread.start({ context.readLoop() }) {
            case .success(let thread): threads.append(thread)
            case .failure(let error):
                pipeline.fail(CopyError("pthread_create", path, error))
            }
        }
        defer {
            pipeline.stop()
            for thread in threads { thread.join() }
        }
        if threads.isEmpty {
            throw pipeline.failure ?? CopyError("pthread_create", path, Errno.resourceTemporarilyUnavailable)
        }

        var statistics = CopyStatistics()
        statistics.reads = reads.count
        statistics.directIO = directIO
        statistics.bufferCount = depth
        statistics.bufferBytes = pool.buffers.byteCount
        var done: UInt64 = 0
        for sequence in reads.indices {
            let filled = try pipeline.take(sequence)
            defer { pipeline.release(filled.slot) }
            if cancel?.isCancelled == true { throw CopyError.cancelled(path, at: reads[sequence].offset) }
            for record in filled.records {
                try onBlock(record)
                statistics.blocks += 1
                if record.isZero { statistics.zeroBytes += UInt64(record.length) }
            }
            let read = reads[sequence]
            try pool.withBuffer(filled.slot) { buffer in
                try sink.write(offset: read.offset,
                               bytes: UnsafeRawBufferPointer(rebasing: buffer.prefix(read.length)),
                               blocks: filled.records)
            }
            done += UInt64(read.length)
            statistics.bytesRead = done
            progress?(CopyProgress(done: done, total: total, elapsedNanoseconds: monotonicNanoseconds() - start))
        }
        statistics.bytesWritten = sink.bytesWritten
        statistics.seconds = Double(monotonicNanoseconds() - start) / 1e9
        return statistics
    }
}
