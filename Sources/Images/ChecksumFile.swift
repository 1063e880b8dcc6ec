import BlockIO
import CopyEngine
import Foundation
import SnapstackErrors
import SystemPackage

/// The per-block checksums of an image (`IMAGE.sums`): block `i`'s XXH3-128 digest in canonical
/// form at byte `16 * i`. A flat file rather than part of the JSON manifest, so that memory
/// stays bounded whatever the device size (a 1 TiB device at 64 KiB blocks has 16 Mi blocks)
/// and an incremental rewrites only the entries of the blocks it copied.
///
/// Writes are gathered into runs of consecutive blocks, because the copy engine reports blocks
/// in ascending order and a `pwrite` of 16 bytes per block would cost a system call each.
public final class ChecksumFile {
    public let path: FilePath
    public let blockCount: UInt64
    private let fd: FileDescriptor
    private var pending: [UInt8] = []
    private var pendingFirst: UInt64 = 0
    private static let flushBytes = 1 << 16

    /// Opens (or creates, sized for `blockCount` entries) the checksum file.
    public init(path: FilePath, blockCount: UInt64, create: Bool) throws {
        self.path = path
        self.blockCount = blockCount
        do {
            fd = try FileDescriptor.open(path, create ? .readWrite : .readOnly,
                                         options: create ? [.create, .noFollow, .closeOnExec] : [.closeOnExec],
                                         permissions: [.ownerReadWrite, .groupRead, .otherRead])
        } catch {
            throw SnapstackError(.failed, "cannot open the checksum file \(path)", why: "\(error)",
                                 remedy: create ? "check the directory is writable" : "the image needs its .sums file beside it",
                                 cause: error)
        }
        let size = try fd.seek(offset: 0, from: .end)
        if create {
            if size != Int64(blockCount) * 16 {
                guard ftruncate(fd.rawValue, off_t(blockCount * 16)) == 0 else {
                    let error = Errno(rawValue: errno)
                    try? fd.close()
                    throw SnapstackError(.failed, "cannot size the checksum file \(path)", why: "\(error)")
                }
            }
        } else if size != Int64(blockCount) * 16 {
            try? fd.close()
            throw SnapstackError(.failed, "the checksum file \(path) does not match its manifest",
                                 why: "it holds \(size) bytes, \(blockCount) blocks need \(blockCount * 16)",
                                 remedy: "the image needs a new full export")
        }
    }

    deinit { try? fd.close() }

    /// Records block `index`'s digest; kept in memory until the run breaks or grows large.
    public func set(_ index: UInt64, _ digest: Digest128) throws {
        precondition(index < blockCount, "block \(index) beyond the image's \(blockCount) blocks")
        if !pending.isEmpty && (index != pendingFirst + UInt64(pending.count / 16) || pending.count >= Self.flushBytes) {
            try flush()
        }
        if pending.isEmpty { pendingFirst = index }
        pending.append(contentsOf: digest.canonicalBytes)
    }

    /// Writes what `set` gathered.
    public func flush() throws {
        guard !pending.isEmpty else { return }
        do {
            _ = try pending.withUnsafeBytes { try fd.writeAll(toAbsoluteOffset: Int64(pendingFirst) * 16, $0) }
        } catch {
            throw SnapstackError(.failed, "cannot write the checksum file \(path)", why: "\(error)", cause: error)
        }
        pending.removeAll(keepingCapacity: true)
    }

    /// Flushes and fsyncs.
    public func sync() throws {
        try flush()
        do { try syncDescriptor(fd.rawValue).get() } catch {
            throw SnapstackError(.failed, "cannot sync the checksum file \(path)", why: "\(error)", cause: error)
        }
    }

    /// The digests of blocks `range`, read from the file.
    public func digests(_ range: Range<UInt64>) throws -> [Digest128] {
        let count = Int(range.count)
        var bytes = [UInt8](repeating: 0, count: count * 16)
        let read = try bytes.withUnsafeMutableBytes { try fd.read(fromAbsoluteOffset: Int64(range.lowerBound) * 16, into: $0) }
        guard read == bytes.count else {
            throw SnapstackError(.failed, "the checksum file \(path) is truncated", why: "short read at block \(range.lowerBound)")
        }
        return bytes.withUnsafeBytes { raw in
            (0..<count).map { Digest128(canonical: UnsafeRawBufferPointer(rebasing: raw[($0 * 16)..<($0 * 16 + 16)])) }
        }
    }

    /// A digest of the whole file: XXH3-128 over the XXH3-128 of each 1 MiB piece, read in pieces
    /// so that memory stays bounded. Recorded in the manifest to tell a damaged checksum file
    /// from a damaged image.
    public func fileDigest() throws -> Digest128 {
        try flush()
        let piece = 1 << 20
        var buffer = [UInt8](repeating: 0, count: piece)
        var pieceDigests: [UInt8] = []
        var offset: Int64 = 0
        let total = Int64(blockCount) * 16
        while offset < total {
            let want = Int(min(Int64(piece), total - offset))
            let got = try buffer.withUnsafeMutableBytes {
                try fd.read(fromAbsoluteOffset: offset, into: UnsafeMutableRawBufferPointer(rebasing: $0.prefix(want)))
            }
            guard got == want else {
                throw SnapstackError(.failed, "the checksum file \(path) is truncated", why: "short read at byte \(offset)")
            }
            pieceDigests += buffer.withUnsafeBytes { Digest128.of(UnsafeRawBufferPointer(rebasing: $0.prefix(want))) }.canonicalBytes
            offset += Int64(want)
        }
        return pieceDigests.withUnsafeBytes { Digest128.of($0) }
    }
}
