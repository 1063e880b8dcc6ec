import BlockIO
import CXXHash
import Foundation
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

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
        do {
            _ = try BlockGeometry(blockSize: blockSize, deviceSize: deviceSize)
        } catch {
            throw corrupt(error.description, at: 20)
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
    /// (without calling `body`) after the end record has been read and checked. (About 85
    /// lines: every check a record gets from hostile input, in the order its bytes come, is in
    /// this one place.)
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
