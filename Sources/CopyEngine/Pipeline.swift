import BlockIO
import CShims
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A read that has been done and analysed, waiting for its turn at the sink.
struct FilledBuffer: Sendable {
    var slot: Int
    var records: [BlockRecord]
}

/// The hand-over between reader threads and the writing thread: free buffers, the next read to
/// start, finished reads by sequence number, and the first failure. One lock guards it all.
final class Pipeline: @unchecked Sendable {
    private let lock = ConditionLock()
    private var free: [Int]
    private var nextRead = 0
    private let readCount: Int
    let reads: [PlannedRead]
    private var finished: [Int: FilledBuffer] = [:]
    private var stopped = false
    private(set) var failure: (any Error)?

    init(slots: Int, reads: [PlannedRead]) {
        free = Array((0..<slots).reversed())
        self.reads = reads
        readCount = reads.count
    }

    /// For a reader: a free buffer and the next read, waiting for a buffer while all are in use;
    /// nil when there is nothing left to read or the copy is stopping.
    ///
    /// The buffer is claimed before the sequence number, so the oldest unfinished read always
    /// holds a buffer: the writer can never wait for a read that cannot start.
    func claim() -> (slot: Int, sequence: Int)? {
        lock.withLock {
            while true {
                if stopped || failure != nil || nextRead == readCount { return nil }
                if let slot = free.popLast() {
                    defer { nextRead += 1 }
                    return (slot, nextRead)
                }
                lock.wait()
            }
        }
    }

    func complete(_ sequence: Int, _ filled: FilledBuffer) {
        lock.withLock {
            finished[sequence] = filled
            lock.broadcast()
        }
    }

    /// For the writer: the read `sequence` once it is done, or the readers' failure.
    func take(_ sequence: Int) throws -> FilledBuffer {
        try lock.withLock {
            while true {
                if let filled = finished.removeValue(forKey: sequence) { return filled }
                if let failure { throw failure }
                lock.wait()
            }
        }
    }

    func release(_ slot: Int) {
        lock.withLock {
            free.append(slot)
            lock.broadcast()
        }
    }

    /// Records the first failure and wakes everyone; later failures are consequences.
    func fail(_ error: any Error) {
        lock.withLock {
            if failure == nil { failure = error }
            lock.broadcast()
        }
    }

    func stop() {
        lock.withLock {
            stopped = true
            lock.broadcast()
        }
    }
}

/// What a reader thread needs; immutable and shared by all readers of one copy.
struct ReaderContext: Sendable {
    let fd: Int32
    let path: String
    let blockSize: Int
    let alignment: Int
    let directIO: Bool
    let pool: SharedBuffers
    let pipeline: Pipeline
    let limiter: RateLimiter?
    let cancel: CancellationFlag?

    func readLoop() {
        // Zero blocks all have the same digest per length: compute it once per thread.
        var zeroDigests: [Int: Digest128] = [:]
        while let (slot, sequence) = pipeline.claim() {
            let read = pipeline.reads[sequence]
            if cancel?.isCancelled == true {
                pipeline.fail(CopyError.cancelled(path, at: read.offset))
                return
            }
            if let limiter, !limiter.acquire(UInt64(read.length), cancel: cancel) {
                pipeline.fail(CopyError.cancelled(path, at: read.offset))
                return
            }
            let outcome: Result<[BlockRecord], CopyError> = pool.withBuffer(slot) { buffer in
                // O_DIRECT lengths must be whole logical blocks; only a file's last block can be
                // short, and there the kernel stops at the end of the file.
                let wanted = directIO ? (read.length + alignment - 1) / alignment * alignment : read.length
                let target = UnsafeMutableRawBufferPointer(rebasing: buffer.prefix(wanted))
                switch preadFully(fd, target, at: read.offset) {
                case .failure(let error):
                    return .failure(CopyError("pread", path, offset: read.offset, error))
                case .success(let count) where count < read.length:
                    return .failure(CopyError(operation: "pread", path: path, offset: read.offset,
                                              reason: .unexpectedEnd(expected: UInt64(read.length), got: UInt64(count))))
                case .success:
                    break
                }
                var records: [BlockRecord] = []
                records.reserveCapacity((read.length + blockSize - 1) / blockSize)
                var position = 0
                while position < read.length {
                    let length = min(blockSize, read.length - position)
                    let bytes = UnsafeRawBufferPointer(rebasing: buffer[position..<position + length])
                    let zero = isAllZero(bytes)
                    let digest: Digest128
                    if zero, let known = zeroDigests[length] {
                        digest = known
                    } else {
                        digest = Digest128.of(bytes)
                        if zero { zeroDigests[length] = digest }
                    }
                    let offset = read.offset + UInt64(position)
                    records.append(BlockRecord(index: offset / UInt64(blockSize), offset: offset,
                                               length: length, isZero: zero, digest: digest))
                    position += length
                }
                return .success(records)
            }
            switch outcome {
            case .success(let records): pipeline.complete(sequence, FilledBuffer(slot: slot, records: records))
            case .failure(let error):
                pipeline.fail(error)
                return
            }
        }
    }
}
