import BlockIO
import CopyEngine
import Foundation
import Locking
import SnapstackErrors
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// What `apply` did.
public struct ApplyOutcome: Sendable {
    /// The manifest the image now has.
    public var manifest: ImageManifest
    public var records: UInt64
    public var dataBytes: UInt64
}

extension Image {
    /// Applies a delta stream (`export --to - --format delta`) to an image: a full stream makes a
    /// new image, an incremental one updates the image that holds its base export. The image is
    /// marked incomplete until the stream's end record has been read and checked, so a truncated
    /// or damaged stream leaves an image that says so; applying the whole stream again
    /// finishes it.
    public static func apply(from input: FileDescriptor, to image: FilePath,
                             progress: ((CopyProgress) -> Void)? = nil) throws -> ApplyOutcome {
        let reader: DeltaStreamReader
        do {
            reader = try DeltaStreamReader(descriptor: input)
        } catch {
            throw SnapstackError(.failed, "the input is not a snapstack delta stream", why: "\(error)",
                                 remedy: "make it with `snapstack export SNAP --to - --format delta`; a raw stream is a plain image (use dd)")
        }
        var manifest = try ImageManifest.decode(reader.header.payload, source: "the stream's manifest")
        guard manifest.blockSize == reader.header.blockSize, manifest.device.sizeBytes == reader.header.deviceSize else {
            throw SnapstackError(.verificationFailed, "the stream contradicts its own manifest",
                                 why: "block size or device size differ between the stream header and the manifest")
        }

        let lock = try ImageManifest.lockWriter(ofImage: image)
        defer { withExtendedLifetime(lock) {} }
        let fresh = try placeStream(&manifest, into: image)
        if fresh { try checkRoomForChecksums(manifest, image: image) }

        // Intent first, then the blocks, then the seal.
        manifest.state = .incomplete
        manifest.checksums.file = ImageManifest.checksumPath(forImage: image).lastComponent?.string ?? ""
        manifest.checksums.digest = nil
        try manifest.write(forImage: image)
        let sums = try ChecksumFile(path: ImageManifest.checksumPath(forImage: image), blockCount: manifest.blockCount, create: true)
        let blockSize = manifest.blockSize
        let size = manifest.device.sizeBytes
        let zeros = ZeroRun(blockSize: blockSize)
        let started = ContinuousClock.now
        var done: UInt64 = 0
        do {
            let sink = try SparseFileSink(path: image, size: size, zeroBlocks: fresh ? .leaveHoles : .punchHoles,
                                          permissions: [.ownerReadWrite, .groupRead])
            while try reader.next({ record, bytes in
                switch record.kind {
                case .data:
                    guard let digest = record.digest else { return }
                    let block = BlockRecord(index: record.offset / UInt64(blockSize), offset: record.offset,
                                            length: Int(record.length), isZero: false, digest: digest)
                    try sink.write(offset: record.offset, bytes: bytes, blocks: [block])
                    try sums.set(block.index, digest)
                case .zero:
                    try zeros.write(record.offset, record.length, deviceSize: size, into: sink) { try sums.set($0, $1) }
                case .end:
                    break
                }
                done += record.length
                if let progress {
                    let elapsed = (ContinuousClock.now - started).components
                    let seconds = Double(elapsed.seconds) + Double(elapsed.attoseconds) / 1e18
                    progress(CopyProgress(bytesDone: done, bytesTotal: size, bytesPerSecond: seconds > 0 ? Double(done) / seconds : 0,
                                          etaSeconds: nil, elapsedSeconds: seconds))
                }
            }) != nil {}
            try sink.finish()
        } catch let error as SnapstackError {
            throw error
        } catch {
            throw SnapstackError(.verificationFailed, "applying the stream to \(image) stopped", why: "\(error)",
                                 remedy: "the image is marked incomplete; apply the whole stream again", cause: error)
        }
        try sums.sync()
        manifest.state = .complete
        manifest.checksums.digest = try sums.fileDigest().hex
        try manifest.write(forImage: image)
        let summary = reader.summary
        return ApplyOutcome(manifest: manifest, records: summary?.records ?? 0, dataBytes: summary?.dataBytes ?? 0)
    }

    /// Whether the stream of `manifest` may go into `image`, and how: a full stream into a new
    /// path or its own unfinished image (true: a fresh image), an incremental one onto the image
    /// holding its base, or its own unfinished run (false). Sets the chain the image will carry.
    private static func placeStream(_ manifest: inout ImageManifest, into image: FilePath) throws -> Bool {
        let existing = try ImageManifest.read(forImage: image)
        let imageExists = FileManager.default.fileExists(atPath: image.string)
        if let base = manifest.export.base {
            guard let existing else {
                throw SnapstackError(imageExists ? .refused : .notFound,
                                     imageExists ? "\(image) is not a snapstack image" : "\(image) does not exist",
                                     why: "the stream updates the image of export \(base)",
                                     remedy: "apply it to that image")
            }
            try checkSameDevice(existing, manifest, image)
            if existing.state == .complete {
                guard existing.export.id == base else {
                    throw SnapstackError(.refused, "\(image) holds export \(existing.export.id)",
                                         why: "the stream is export \(manifest.export.id) on top of \(base)",
                                         remedy: "apply the streams in order, starting from the image of \(base)")
                }
                manifest.export.chain = existing.export.chain + [manifest.export.id]
            } else {
                try checkResumable(existing, manifest, image)
                manifest.export.chain = existing.export.chain
            }
            return false
        } else {
            if let existing {
                try checkSameDevice(existing, manifest, image)
                guard existing.state == .incomplete else {
                    throw SnapstackError(.refused, "\(image) already holds export \(existing.export.id)",
                                         why: "a full stream never overwrites an image", remedy: "apply it to a new path")
                }
                try checkResumable(existing, manifest, image)
            } else if imageExists {
                throw SnapstackError(.refused, "\(image) exists and is not a snapstack image",
                                     why: "it has no manifest beside it", remedy: "apply to a new path")
            }
            manifest.export.chain = [manifest.export.id]
            return true
        }
    }

    /// A full stream fills every entry of the checksum file, 16 bytes a block, so the space
    /// for them is known before the first record. A stream whose header claims a device far
    /// larger than the stream could ever fill is refused here, before it creates anything,
    /// instead of running the file system full one zero record at a time.
    private static func checkRoomForChecksums(_ manifest: ImageManifest, image: FilePath) throws {
        let directory = image.containingDirectory
        var facts = statvfs()
        guard statvfs(directory.string, &facts) == 0 else { return }  // the open that follows names the problem
        let available = UInt64(facts.f_bavail).multipliedReportingOverflow(by: UInt64(facts.f_frsize))
        let free = available.overflow ? UInt64.max : available.partialValue
        let needed = manifest.blockCount * 16
        guard needed <= free else {
            throw SnapstackError(.refused, "no room for the checksums of \(image)",
                                 why: "a \(manifest.device.sizeBytes)-byte device at \(manifest.blockSize)-byte blocks needs \(needed) bytes of checksums, \(directory) has \(free) free",
                                 remedy: "apply to a file system with more room, or check that the stream is the one you meant")
        }
    }

    private static func checkSameDevice(_ existing: ImageManifest, _ stream: ImageManifest, _ image: FilePath) throws {
        guard existing.device.id == stream.device.id, existing.blockSize == stream.blockSize,
              existing.device.sizeBytes == stream.device.sizeBytes else {
            throw SnapstackError(.refused, "\(image) holds an image of \(existing.device.name), not of the stream's \(stream.device.name)",
                                 why: existing.device.id == stream.device.id ? "the block size or device size differ" : "different devices",
                                 remedy: "apply the stream to an image of the same device")
        }
    }

    /// An incomplete image may only be finished by the export that left it so.
    private static func checkResumable(_ existing: ImageManifest, _ stream: ImageManifest, _ image: FilePath) throws {
        guard existing.export.id == stream.export.id else {
            throw SnapstackError(.refused, "\(image) is incomplete",
                                 why: "export \(existing.export.id) stopped half-way while being applied",
                                 remedy: "apply that export's stream again to finish it")
        }
    }
}

/// Hands a zero record to a sink in pieces of at most 1 MiB, from one buffer of zeros, so that a
/// long run of zeros costs no memory of its size.
private final class ZeroRun {
    let blockSize: Int
    private let piece: Int
    private let buffer: UnsafeMutableRawBufferPointer
    private var digests: [Int: Digest128] = [:]

    init(blockSize: Int) {
        self.blockSize = blockSize
        piece = max(blockSize, (1 << 20) / blockSize * blockSize)
        buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: piece, alignment: 4096)
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
    }

    deinit { buffer.deallocate() }

    func digest(_ length: Int) -> Digest128 {
        if let known = digests[length] { return known }
        let digest = Digest128.of(UnsafeRawBufferPointer(rebasing: buffer[0..<length]))
        digests[length] = digest
        return digest
    }

    func write(_ offset: UInt64, _ length: UInt64, deviceSize: UInt64, into sink: CopySink,
                        checksum: (UInt64, Digest128) throws -> Void) throws {
        var at = offset
        let end = offset + length
        while at < end {
            let count = Int(min(UInt64(piece), end - at))
            var blocks: [BlockRecord] = []
            var blockOffset = at
            while blockOffset < at + UInt64(count) {
                let blockLength = Int(min(UInt64(blockSize), deviceSize - blockOffset))
                let block = BlockRecord(index: blockOffset / UInt64(blockSize), offset: blockOffset, length: blockLength,
                                        isZero: true, digest: digest(blockLength))
                blocks.append(block)
                try checksum(block.index, block.digest)
                blockOffset += UInt64(blockLength)
            }
            try sink.write(offset: at, bytes: UnsafeRawBufferPointer(rebasing: buffer[0..<count]), blocks: blocks)
            at += UInt64(count)
        }
    }
}
