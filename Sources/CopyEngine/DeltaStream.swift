import CXXHash
import Foundation
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// # The snapstack delta stream, version 1
///
/// A delta stream carries the changed blocks of a device from one export to the next (or all
/// non-zero blocks, for a full one), as a single forward-only byte stream that can go through
/// a pipe. Every integer is unsigned and big-endian. Digests are XXH3-128 (xxHash 0.8) in
/// xxHash's canonical form (16 bytes, big-endian, the digits `xxhsum -H2` prints); checks are
/// XXH3-64 with a seed (`XXH3_64bits_withSeed`).
///
/// ## Stream header (40 + P + 16 bytes)
///
/// | offset | size | field |
/// |-------:|-----:|-------|
/// | 0      | 16   | magic: the 15 ASCII bytes `SNAPSTACK-DELTA` and one 0x00 |
/// | 16     | 4    | format version: 1 |
/// | 20     | 4    | block size B in bytes (a multiple of 512, at most 64 MiB) |
/// | 24     | 8    | device size in bytes |
/// | 32     | 8    | payload length P (at most 64 MiB) |
/// | 40     | P    | payload: opaque to the stream; snapstack puts the export manifest (JSON) here |
/// | 40 + P | 16   | header digest: XXH3-128 of bytes 0 ..< 40 + P |
///
/// ## Records
///
/// Then come records, each a 56-byte record header, followed by data for data records:
///
/// | offset | size | field |
/// |-------:|-----:|-------|
/// | 0      | 1    | kind: `D` (0x44) data, `Z` (0x5A) zero, `E` (0x45) end |
/// | 1      | 7    | zero |
/// | 8      | 8    | record number: 0 for the first record, then +1 each (the end record's is the number of records before it) |
/// | 16     | 8    | `D`, `Z`: device offset; `E`: total bytes of all `D` and `Z` records |
/// | 24     | 8    | `D`, `Z`: length in bytes; `E`: bytes of all `D` records |
/// | 32     | 16   | `D`: XXH3-128 of the record's data; `Z`, `E`: zero |
/// | 48     | 8    | check: XXH3-64 of bytes 0 ..< 48 of this header, seeded with the previous record's check (for record 0: with the low 64 bits of the header digest, i.e. bytes 8 ..< 16 of its canonical form) |
/// | 56     | n    | `D` only: n = length bytes of data |
///
/// - A `D` record holds one block: its offset is a multiple of B, its length is B, or less only
///   for the device's last block when the device size is not a multiple of B. A `Z` record says
///   that a run of whole blocks (the last may be short in the same way) reads as zeros.
/// - Records go strictly forward: each starts at or after the end of the one before, and ends
///   at or before the device size. Blocks without a record did not change.
/// - The stream ends with exactly one `E` record and nothing after it.
///
/// ## What the reader detects
///
/// Because each check is chained to the one before, a damaged record header, a record lost,
/// repeated or reordered, and a splice of two streams all break the chain at the first record
/// affected; damaged data fails its record's digest. A stream that ends before the `E` record,
/// at a record boundary or inside a record, is truncated. Each error names the record number
/// and the stream offset where it was found; nothing after a failed check is trusted.
public enum DeltaStreamFormat {
    /// The size of a record header.
    public static let recordHeaderSize = 56
}

/// The stream header: everything but the records.
public struct DeltaStreamHeader: Hashable, Sendable {
    public static let magic: [UInt8] = Array("SNAPSTACK-DELTA".utf8) + [0]
    public static let currentVersion: UInt32 = 1
    public static let maximumPayload = 64 << 20
    public static let maximumBlockSize = 64 << 20

    public var version: UInt32
    public var blockSize: Int
    public var deviceSize: UInt64
    /// Opaque to the stream; snapstack puts the export manifest (JSON) here.
    public var payload: Data

    public init(blockSize: Int, deviceSize: UInt64, payload: Data, version: UInt32 = DeltaStreamHeader.currentVersion) {
        self.version = version
        self.blockSize = blockSize
        self.deviceSize = deviceSize
        self.payload = payload
    }

    /// The header's bytes up to (not including) its digest.
    func encodedBody() -> [UInt8] {
        var bytes = DeltaStreamHeader.magic
        bytes.appendBigEndian(version)
        bytes.appendBigEndian(UInt32(blockSize))
        bytes.appendBigEndian(deviceSize)
        bytes.appendBigEndian(UInt64(payload.count))
        bytes.append(contentsOf: payload)
        return bytes
    }
}

/// One record of a delta stream, as the reader found it.
public struct DeltaRecord: Hashable, Sendable {
    public enum Kind: UInt8, Hashable, Sendable {
        case data = 0x44  // "D"
        case zero = 0x5A  // "Z"
        case end = 0x45   // "E"
    }
    public var number: UInt64
    public var kind: Kind
    public var offset: UInt64
    public var length: UInt64
    /// XXH3-128 of the data, for data records.
    public var digest: Digest128?
}

/// What a complete stream held, from its end record (and checked against the records).
public struct DeltaStreamSummary: Hashable, Sendable {
    /// Data and zero records.
    public var records: UInt64
    /// Bytes covered by data and zero records.
    public var totalBytes: UInt64
    /// Bytes of data records.
    public var dataBytes: UInt64
}

let deltaRecordHeaderSize = DeltaStreamFormat.recordHeaderSize

/// Encodes the 48 checked bytes of a record header followed by its chained check.
func encodeRecordHeader(kind: DeltaRecord.Kind, number: UInt64, offset: UInt64, length: UInt64,
                        digest: Digest128?, previousCheck: UInt64,
                        into destination: UnsafeMutableRawBufferPointer) -> UInt64 {
    precondition(destination.count >= deltaRecordHeaderSize)
    destination.storeBytes(of: kind.rawValue, toByteOffset: 0, as: UInt8.self)
    for index in 1..<8 { destination.storeBytes(of: 0, toByteOffset: index, as: UInt8.self) }
    destination.storeBytes(of: number.bigEndian, toByteOffset: 8, as: UInt64.self)
    destination.storeBytes(of: offset.bigEndian, toByteOffset: 16, as: UInt64.self)
    destination.storeBytes(of: length.bigEndian, toByteOffset: 24, as: UInt64.self)
    let digestBytes = UnsafeMutableRawBufferPointer(rebasing: destination[32..<48])
    if let digest { digest.writeCanonical(to: digestBytes) } else { digestBytes.initializeMemory(as: UInt8.self, repeating: 0) }
    let check = XXH3_64bits_withSeed(destination.baseAddress, 48, previousCheck)
    destination.storeBytes(of: check.bigEndian, toByteOffset: 48, as: UInt64.self)
    return check
}

/// A sink that writes a delta stream: the header at once, then a `D` record per data block and
/// one `Z` record per run of zero blocks (runs continue across writes), and the `E` record in
/// `finish`. Records go out with `writev(2)`, the data straight from the engine's buffer.
public final class DeltaStreamWriter: CopySink {
    public let header: DeltaStreamHeader
    public let name: String
    /// Bytes of the stream written so far.
    public private(set) var streamOffset: UInt64 = 0
    /// Bytes of data records' data.
    public private(set) var bytesWritten: UInt64 = 0
    public private(set) var recordCount: UInt64 = 0
    private var totalBytes: UInt64 = 0
    private var lastCheck: UInt64
    private var lastEnd: UInt64 = 0
    private var pendingZero: Extent?
    private var finished = false
    private let fd: Int32

    /// Writes the stream header to `descriptor` (which the writer does not close). `name` is
    /// what errors call the output.
    public init(descriptor: FileDescriptor, header: DeltaStreamHeader, name: String = "stdout",
                ignoreSIGPIPE: Bool = true) throws(CopyError) {
        guard header.payload.count <= DeltaStreamHeader.maximumPayload else {
            throw .invalid(name, "delta stream payload of \(header.payload.count) bytes exceeds \(DeltaStreamHeader.maximumPayload)")
        }
        guard header.blockSize >= 512, header.blockSize % 512 == 0, header.blockSize <= DeltaStreamHeader.maximumBlockSize else {
            throw .invalid(name, "delta stream block size \(header.blockSize) is not a multiple of 512 up to 64 MiB")
        }
        self.header = header
        self.name = name
        self.fd = descriptor.rawValue
        if ignoreSIGPIPE { signal(SIGPIPE, SIG_IGN) }
        var bytes = header.encodedBody()
        let digest = bytes.withUnsafeBytes { Digest128.of($0) }
        bytes.append(contentsOf: digest.canonicalBytes)
        lastCheck = digest.low64
        if case .failure(let error) = bytes.withUnsafeBytes({ writeFully(fd, $0) }) {
            throw CopyError("write", name, offset: 0, error)
        }
        streamOffset = UInt64(bytes.count)
    }

    public func write(offset: UInt64, bytes: UnsafeRawBufferPointer, blocks: [BlockRecord]) throws {
        guard !finished else { throw CopyError.invalid(name, "write after the end record") }
        guard offset >= lastEnd else {
            throw CopyError.invalid(name, "write at \(offset) after \(lastEnd): a delta stream only goes forward")
        }
        let dataBlocks = blocks.reduce(0) { $0 + ($1.isZero ? 0 : 1) }
        // One header per data block, plus at most one zero record flushed before each of them.
        var headers = [UInt8](repeating: 0, count: (2 * dataBlocks + 1) * deltaRecordHeaderSize)
        try headers.withUnsafeMutableBytes { headerSpace in
            var vectors: [iovec] = []
            vectors.reserveCapacity(3 * dataBlocks + 1)
            var used = 0
            func header(_ kind: DeltaRecord.Kind, _ recordOffset: UInt64, _ length: UInt64, _ digest: Digest128?) {
                let slot = UnsafeMutableRawBufferPointer(rebasing: headerSpace[used..<used + deltaRecordHeaderSize])
                lastCheck = encodeRecordHeader(kind: kind, number: recordCount, offset: recordOffset, length: length,
                                               digest: digest, previousCheck: lastCheck, into: slot)
                vectors.append(iovec(iov_base: slot.baseAddress, iov_len: deltaRecordHeaderSize))
                used += deltaRecordHeaderSize
                recordCount += 1
                totalBytes += length
            }
            var position = 0
            for block in blocks {
                defer { position += block.length }
                if block.isZero {
                    if let pending = pendingZero, pending.end == block.offset {
                        pendingZero!.length += UInt64(block.length)
                    } else {
                        if let pending = pendingZero { header(.zero, pending.offset, pending.length, nil) }
                        pendingZero = Extent(offset: block.offset, length: UInt64(block.length))
                    }
                    continue
                }
                if let pending = pendingZero {
                    header(.zero, pending.offset, pending.length, nil)
                    pendingZero = nil
                }
                header(.data, block.offset, UInt64(block.length), block.digest)
                vectors.append(iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes.baseAddress! + position),
                                     iov_len: block.length))
                bytesWritten += UInt64(block.length)
            }
            let size = vectors.reduce(UInt64(0)) { $0 + UInt64($1.iov_len) }
            if case .failure(let error) = writevFully(fd, &vectors) {
                throw CopyError("writev", name, offset: streamOffset, error)
            }
            streamOffset += size
        }
        lastEnd = offset + UInt64(bytes.count)
    }

    /// Writes the pending zero record and the end record, then `fsync`s a regular file.
    public func finish() throws {
        guard !finished else { return }
        var headers = [UInt8](repeating: 0, count: 2 * deltaRecordHeaderSize)
        var used = 0
        headers.withUnsafeMutableBytes { space in
            if let pending = pendingZero {
                lastCheck = encodeRecordHeader(kind: .zero, number: recordCount, offset: pending.offset,
                                               length: pending.length, digest: nil, previousCheck: lastCheck,
                                               into: UnsafeMutableRawBufferPointer(rebasing: space[0..<deltaRecordHeaderSize]))
                recordCount += 1
                totalBytes += pending.length
                used = deltaRecordHeaderSize
            }
            lastCheck = encodeRecordHeader(kind: .end, number: recordCount, offset: totalBytes, length: bytesWritten,
                                           digest: nil, previousCheck: lastCheck,
                                           into: UnsafeMutableRawBufferPointer(rebasing: space[used..<used + deltaRecordHeaderSize]))
            used += deltaRecordHeaderSize
        }
        pendingZero = nil
        try headers.withUnsafeBytes { raw in
            if case .failure(let error) = writeFully(fd, UnsafeRawBufferPointer(rebasing: raw[0..<used])) {
                throw CopyError("write", name, offset: streamOffset, error)
            }
        }
        streamOffset += UInt64(used)
        finished = true
        if case .failure(let error) = syncDescriptor(fd) { throw CopyError("fsync", name, error) }
    }
}

/// Buffered reads from a stream: whole-record reads out of a 1 MiB buffer, so that a record
/// header costs no system call of its own.
final class StreamInput {
    private let buffer = AlignedBuffers(count: 1, size: 1 << 20, alignment: 4096)
    private var start = 0
    private var end = 0
    private var atEnd = false
    let fd: Int32
    /// Bytes handed out so far: the stream offset of the next byte.
    private(set) var offset: UInt64 = 0

    init(fd: Int32) { self.fd = fd }

    /// Fills `destination` completely and returns its size, or returns fewer bytes only at the
    /// end of the stream.
    func read(into destination: UnsafeMutableRawBufferPointer) -> Result<Int, Errno> {
        var done = 0
        while done < destination.count {
            if start == end {
                if atEnd { break }
                let result: Result<Int, Errno> = buffer.withBuffer(0) { space in
                    retryingInterrupts { Glibc.read(fd, space.baseAddress, space.count) }
                }
                switch result {
                case .success(0): atEnd = true; continue
                case .success(let count): start = 0; end = count
                case .failure(let error): return .failure(error)
                }
            }
            let piece = min(end - start, destination.count - done)
            buffer.withBuffer(0) { space in
                (destination.baseAddress! + done).copyMemory(from: space.baseAddress! + start, byteCount: piece)
            }
            start += piece
            done += piece
        }
        offset += UInt64(done)
        return .success(done)
    }
}

/// Reads a delta stream: the header at once (`header`), then the records in order, checking
/// each record's chained check, each data record's digest, the order and bounds of records, and
/// the end record's totals. Throws `CopyError` with `.corruptStream` or `.truncatedStream`
/// naming the record number and stream offset.
public final class DeltaStreamReader {
    public let header: DeltaStreamHeader
    public let name: String
    /// Set once the end record has been read and checked.
    public private(set) var summary: DeltaStreamSummary?
    private let input: StreamInput
    private let data: AlignedBuffers
    private var lastCheck: UInt64
    private var nextNumber: UInt64 = 0
    private var lastEnd: UInt64 = 0
    private var totalBytes: UInt64 = 0
    private var dataBytes: UInt64 = 0

    /// Reads and checks the stream header from `descriptor` (which the reader does not close).
    public init(descriptor: FileDescriptor, name: String = "stdin") throws(CopyError) {
        self.name = name
        let input = StreamInput(fd: descriptor.rawValue)
        self.input = input
        var fixed = [UInt8](repeating: 0, count: 40)
        func fill(_ bytes: inout [UInt8], _ what: String) throws(CopyError) {
            let before = input.offset
            let result = bytes.withUnsafeMutableBytes { input.read(into: $0) }
            switch result {
            case .failure(let error): throw CopyError("read", name, offset: before, error)
            case .success(let count) where count < bytes.count:
                throw CopyError(operation: "read", path: name, offset: before + UInt64(count),
                                reason: .corruptStream(record: nil, what: "the stream ends inside its header (\(what))"))
            case .success: break
            }
        }
        func corrupt(_ what: String, at offset: UInt64 = 0) -> CopyError {
            CopyError(operation: "read", path: name, offset: offset, reason: .corruptStream(record: nil, what: what))
        }
        try fill(&fixed, "fixed fields")
        guard Array(fixed[0..<16]) == DeltaStreamHeader.magic else {
            throw corrupt("no SNAPSTACK-DELTA magic: not a snapstack delta stream")
        }
        let version = fixed.bigEndian(UInt32.self, at: 16)
        guard version == DeltaStreamHeader.currentVersion else {
            throw corrupt("format version \(version) is not one this snapstack reads (\(DeltaStreamHeader.currentVersion))", at: 16)
        }
        let blockSize = Int(fixed.bigEndian(UInt32.self, at: 20))
        let deviceSize = fixed.bigEndian(UInt64.self, at: 24)
        let payloadLength = fixed.bigEndian(UInt64.self, at: 32)
        // Bounds before allocating: a damaged length must not become a huge allocation.
        guard payloadLength <= UInt64(DeltaStreamHeader.maximumPayload) else {
            throw corrupt("payload length \(payloadLength) exceeds \(DeltaStreamHeader.maximumPayload)", at: 32)
        }
        guard blockSize >= 512, blockSize % 512 == 0, blockSize <= DeltaStreamHeader.maximumBlockSize else {
            throw corrupt("block size \(blockSize) is not a multiple of 512 up to 64 MiB", at: 20)
        }
        var payload = [UInt8](repeating: 0, count: Int(payloadLength))
        try fill(&payload, "payload")
        var digestBytes = [UInt8](repeating: 0, count: Digest128.byteCount)
        try fill(&digestBytes, "header digest")
        let expected = (fixed + payload).withUnsafeBytes { Digest128.of($0) }
        let found = digestBytes.withUnsafeBytes { Digest128(canonical: $0) }
        guard expected == found else {
            throw corrupt("header digest \(found) does not match its content (\(expected))", at: 40 + payloadLength)
        }
        header = DeltaStreamHeader(blockSize: blockSize, deviceSize: deviceSize, payload: Data(payload), version: version)
        lastCheck = found.low64
        data = AlignedBuffers(count: 1, size: (blockSize + 4095) / 4096 * 4096, alignment: 4096)
    }

    private func corrupt(_ what: String, record: UInt64, at offset: UInt64) -> CopyError {
        CopyError(operation: "read", path: name, offset: offset, reason: .corruptStream(record: record, what: what))
    }

    /// Reads the next record. For a data record, `body` sees its bytes after their digest was
    /// checked (valid only during the call); for a zero record, an empty buffer. Returns nil
    /// (without calling `body`) after the end record has been read and checked.
    public func next(_ body: (DeltaRecord, UnsafeRawBufferPointer) throws -> Void) throws -> DeltaRecord? {
        if summary != nil { return nil }
        let number = nextNumber
        let recordStart = input.offset
        var raw = [UInt8](repeating: 0, count: deltaRecordHeaderSize)
        switch raw.withUnsafeMutableBytes({ input.read(into: $0) }) {
        case .failure(let error): throw CopyError("read", name, offset: recordStart, error)
        case .success(0):
            throw CopyError(operation: "read", path: name, offset: recordStart, reason: .truncatedStream(
                record: number, what: "the stream ends after \(number) records without an end record"))
        case .success(let count) where count < deltaRecordHeaderSize:
            throw CopyError(operation: "read", path: name, offset: recordStart, reason: .truncatedStream(
                record: number, what: "the stream ends inside the header of record \(number)"))
        case .success: break
        }
        let check = raw.withUnsafeBytes { XXH3_64bits_withSeed($0.baseAddress, 48, lastCheck) }
        guard check == raw.bigEndian(UInt64.self, at: 48) else {
            throw corrupt("record header check fails (damaged, lost, repeated or reordered record)", record: number, at: recordStart)
        }
        lastCheck = check
        guard let kind = DeltaRecord.Kind(rawValue: raw[0]), raw[1..<8].allSatisfy({ $0 == 0 }) else {
            throw corrupt("unknown record kind 0x\(String(raw[0], radix: 16))", record: number, at: recordStart)
        }
        let recordNumber = raw.bigEndian(UInt64.self, at: 8)
        guard recordNumber == number else {
            throw corrupt("record number \(recordNumber) where \(number) was due", record: number, at: recordStart)
        }
        let offset = raw.bigEndian(UInt64.self, at: 16)
        let length = raw.bigEndian(UInt64.self, at: 24)
        let digest = raw.withUnsafeBytes { Digest128(canonical: UnsafeRawBufferPointer(rebasing: $0[32..<48])) }
        nextNumber += 1

        if kind == .end {
            guard offset == totalBytes, length == dataBytes else {
                throw corrupt("end record counts \(offset) bytes (\(length) of data) but the records hold \(totalBytes) (\(dataBytes) of data)",
                              record: number, at: recordStart)
            }
            var extra = [UInt8](repeating: 0, count: 1)
            if case .success(1) = extra.withUnsafeMutableBytes({ input.read(into: $0) }) {
                throw corrupt("bytes follow the end record", record: number, at: input.offset - 1)
            }
            summary = DeltaStreamSummary(records: number, totalBytes: totalBytes, dataBytes: dataBytes)
            return nil
        }

        let block = UInt64(header.blockSize)
        let (end, overflow) = offset.addingReportingOverflow(length)
        guard length > 0, !overflow, end <= header.deviceSize, offset >= lastEnd, offset % block == 0,
              end % block == 0 || end == header.deviceSize else {
            throw corrupt("record \(kind == .data ? "D" : "Z") \(offset)+\(length) is out of order, unaligned or past the device's end (\(header.deviceSize))",
                          record: number, at: recordStart)
        }
        let record: DeltaRecord
        if kind == .data {
            guard length <= block else {
                throw corrupt("data record of \(length) bytes is longer than a block (\(block))", record: number, at: recordStart)
            }
            try data.withBuffer(0) { space in
                let target = UnsafeMutableRawBufferPointer(rebasing: space[0..<Int(length)])
                switch input.read(into: target) {
                case .failure(let error): throw CopyError("read", name, offset: input.offset, error)
                case .success(let count) where count < Int(length):
                    throw CopyError(operation: "read", path: name, offset: recordStart, reason: .truncatedStream(
                        record: number, what: "the stream ends inside the data of record \(number) (\(count) of \(length) bytes)"))
                case .success: break
                }
                let found = Digest128.of(UnsafeRawBufferPointer(target))
                guard found == digest else {
                    throw corrupt("data at device offset \(offset) has digest \(found), the record says \(digest)",
                                  record: number, at: recordStart)
                }
                let current = DeltaRecord(number: number, kind: .data, offset: offset, length: length, digest: digest)
                try body(current, UnsafeRawBufferPointer(target))
            }
            record = DeltaRecord(number: number, kind: .data, offset: offset, length: length, digest: digest)
            dataBytes += length
        } else {
            record = DeltaRecord(number: number, kind: .zero, offset: offset, length: length, digest: nil)
            try body(record, UnsafeRawBufferPointer(start: nil, count: 0))
        }
        totalBytes += length
        lastEnd = end
        return record
    }

    /// Reads every remaining record, calling `body` for each (see `next`), and returns the
    /// summary of the checked end record.
    @discardableResult
    public func forEach(_ body: (DeltaRecord, UnsafeRawBufferPointer) throws -> Void) throws -> DeltaStreamSummary {
        while try next(body) != nil {}
        return summary!
    }

    /// Applies the rest of the stream to `sink` (without calling its `finish`): data records are
    /// gathered into runs of up to 1 MiB of adjacent blocks, zero records are handed over as
    /// zero blocks (a zero buffer, `isZero` set), so a sink punches, zeroes or skips them as it
    /// does in a copy. `onBlock` sees every block first.
    @discardableResult
    public func apply(to sink: CopySink, onBlock: (BlockRecord) throws -> Void = { _ in }) throws -> DeltaStreamSummary {
        let blockSize = header.blockSize
        let stagingSize = max(blockSize, (1 << 20) / blockSize * blockSize)
        let staging = AlignedBuffers(count: 1, size: (stagingSize + 4095) / 4096 * 4096, alignment: 4096)
        var zeroDigests: [Int: Digest128] = [:]
        try staging.withBuffer(0) { space in
            var runOffset: UInt64 = 0
            var used = 0
            var blocks: [BlockRecord] = []
            func flush() throws {
                guard used > 0 else { return }
                try sink.write(offset: runOffset, bytes: UnsafeRawBufferPointer(rebasing: space[0..<used]), blocks: blocks)
                used = 0
                blocks.removeAll(keepingCapacity: true)
            }
            try forEach { record, bytes in
                switch record.kind {
                case .data:
                    if used > 0 && (runOffset + UInt64(used) != record.offset || used + bytes.count > stagingSize) {
                        try flush()
                    }
                    if used == 0 { runOffset = record.offset }
                    (space.baseAddress! + used).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
                    let block = BlockRecord(index: record.offset / UInt64(blockSize), offset: record.offset,
                                            length: bytes.count, isZero: isAllZero(bytes), digest: record.digest!)
                    try onBlock(block)
                    blocks.append(block)
                    used += bytes.count
                case .zero:
                    try flush()
                    // Hand the run over in staging-sized pieces of zeros.
                    var offset = record.offset
                    let end = record.offset + record.length
                    while offset < end {
                        let piece = Int(min(UInt64(stagingSize), end - offset))
                        UnsafeMutableRawBufferPointer(rebasing: space[0..<piece]).initializeMemory(as: UInt8.self, repeating: 0)
                        var position = 0
                        while position < piece {
                            let length = min(blockSize, piece - position)
                            let digest = zeroDigests[length] ?? Digest128.of(UnsafeRawBufferPointer(rebasing: space[0..<length]))
                            zeroDigests[length] = digest
                            let at = offset + UInt64(position)
                            let block = BlockRecord(index: at / UInt64(blockSize), offset: at, length: length,
                                                    isZero: true, digest: digest)
                            try onBlock(block)
                            blocks.append(block)
                            position += length
                        }
                        runOffset = offset
                        used = piece
                        try flush()
                        offset += UInt64(piece)
                    }
                case .end:
                    break
                }
            }
            try flush()
        }
        return summary!
    }
}

extension Array where Element == UInt8 {
    mutating func appendBigEndian<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.bigEndian) { append(contentsOf: $0) }
    }

    func bigEndian<T: FixedWidthInteger>(_ type: T.Type, at offset: Int) -> T {
        withUnsafeBytes { T(bigEndian: $0.loadUnaligned(fromByteOffset: offset, as: T.self)) }
    }
}
