import BlockIO
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
    public static let maximumBlockSize = BlockGeometry.maximumBlockSize

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
        do {
            _ = try BlockGeometry(blockSize: header.blockSize, deviceSize: header.deviceSize)
        } catch {
            throw .invalid(name, "delta stream \(error)")
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

extension Array where Element == UInt8 {
    mutating func appendBigEndian<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.bigEndian) { append(contentsOf: $0) }
    }

    func bigEndian<T: FixedWidthInteger>(_ type: T.Type, at offset: Int) -> T {
        withUnsafeBytes { T(bigEndian: $0.loadUnaligned(fromByteOffset: offset, as: T.self)) }
    }
}

extension DeltaStreamFormat {
    /// Recomputes, in place, every digest and check of a stream whose bytes were changed: the
    /// header digest, each data record's data digest and each record's chained check, walking
    /// the records as a reader would (as far as lengths in bounds lead). For fuzzers and tests,
    /// so that a mutated stream gets past the checksums to the checks behind them.
    @_spi(Testing)
    public static func reseal(_ bytes: inout [UInt8]) {
        guard bytes.count >= 40 else { return }
        let payloadLength = bytes.bigEndian(UInt64.self, at: 32)
        guard payloadLength <= UInt64(bytes.count), 40 + Int(payloadLength) + Digest128.byteCount <= bytes.count else { return }
        let bodyEnd = 40 + Int(payloadLength)
        let headerDigest = bytes.withUnsafeBytes { Digest128.of(UnsafeRawBufferPointer(rebasing: $0[0..<bodyEnd])) }
        bytes.withUnsafeMutableBytes { headerDigest.writeCanonical(to: UnsafeMutableRawBufferPointer(rebasing: $0[bodyEnd..<(bodyEnd + 16)])) }
        var check = headerDigest.low64
        var position = bodyEnd + Digest128.byteCount
        while position + recordHeaderSize <= bytes.count {
            let start = position
            let length = bytes.bigEndian(UInt64.self, at: start + 24)
            var dataLength = 0
            if bytes[start] == DeltaRecord.Kind.data.rawValue, length <= UInt64(bytes.count - start - recordHeaderSize) {
                dataLength = Int(length)
                let dataStart = start + recordHeaderSize
                let digest = bytes.withUnsafeBytes { Digest128.of(UnsafeRawBufferPointer(rebasing: $0[dataStart..<(dataStart + dataLength)])) }
                bytes.withUnsafeMutableBytes { digest.writeCanonical(to: UnsafeMutableRawBufferPointer(rebasing: $0[(start + 32)..<(start + 48)])) }
            }
            check = bytes.withUnsafeBytes { XXH3_64bits_withSeed($0.baseAddress! + start, 48, check) }
            bytes.withUnsafeMutableBytes { $0.storeBytes(of: check.bigEndian, toByteOffset: start + 48, as: UInt64.self) }
            position = start + recordHeaderSize + dataLength
        }
    }
}
