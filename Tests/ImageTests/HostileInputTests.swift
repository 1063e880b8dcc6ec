@_spi(Testing) import CopyEngine
import Foundation
import Images
import SnapstackErrors
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Manifests and delta streams written by someone else, with sizes chosen to break the
/// arithmetic that follows them: each must be an error that creates nothing, never a trap, a
/// huge allocation or a file system filled one zero record at a time.
@Suite struct HostileImageInputTests {
    private func manifest(deviceSize: UInt64, blockSize: Int) -> ImageManifest {
        ImageManifest(
            state: .complete,
            export: .init(id: "e0000001", kind: "full", base: nil, chain: [], createdAt: Date(), completedAt: Date()),
            device: .init(id: "dev00001", name: "data", sizeBytes: deviceSize),
            snapshot: .init(id: "s1", name: "s1", era: 3, createdAt: Date()),
            sinceEra: nil, blockSize: blockSize, checksumFile: "")
    }

    /// The manifest's JSON with `field`'s number replaced, as a hostile writer would.
    private func tampered(_ manifest: ImageManifest, _ replacements: [String: String]) throws -> Data {
        var text = String(decoding: try manifest.encoded(), as: UTF8.self)
        for (field, value) in replacements {
            let pattern = try Regex("\"\(field)\" : [0-9]+")
            #expect(text.contains(pattern), "the encoded manifest has no \(field)")
            text = text.replacing(pattern, with: "\"\(field)\" : \(value)")
        }
        return Data(text.utf8)
    }

    @Test("a manifest whose device size is near 2^64 is refused (the block count's rounding overflowed)")
    func manifestDeviceSizeNearTheTop() throws {
        let data = try tampered(manifest(deviceSize: 4096, blockSize: 4096),
                                ["sizeBytes": "\(UInt64.max)", "blockCount": "\(UInt64.max / 4096 + 1)"])
        let error = #expect(throws: SnapstackError.self) { try ImageManifest.decode(data, source: "m") }
        #expect(error?.what.contains("inconsistent") == true)
        #expect("\(error.map { "\($0)" } ?? "")".contains("past the largest a device can have"))
    }

    @Test("a manifest whose block size would become a terabyte copy buffer is refused")
    func manifestHugeBlockSize() throws {
        let data = try tampered(manifest(deviceSize: 4096, blockSize: 4096), ["blockSize": "\(1 << 40)"])
        let error = #expect(throws: SnapstackError.self) { try ImageManifest.decode(data, source: "m") }
        #expect("\(error.map { "\($0)" } ?? "")".contains("block size 1099511627776"))
    }

    /// Writes a valid stream, then rewrites its header's device size and recomputes the header
    /// digest, so that the reader's bounds, not its checksum, are what must catch it.
    private func streamClaiming(deviceSize: UInt64, at path: FilePath) throws {
        let payload = try manifest(deviceSize: 4096, blockSize: 4096).encoded()
        let fd = try FileDescriptor.open(path, .writeOnly, options: [.create, .truncate], permissions: .ownerReadWrite)
        let writer = try DeltaStreamWriter(descriptor: fd, header: DeltaStreamHeader(blockSize: 4096, deviceSize: 4096, payload: payload))
        try writer.finish()
        try fd.close()
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path.string)))
        for index in 0..<8 { bytes[24 + index] = UInt8(truncatingIfNeeded: deviceSize >> (56 - 8 * UInt64(index))) }
        DeltaStreamFormat.reseal(&bytes)
        try Data(bytes).write(to: URL(fileURLWithPath: path.string))
    }

    @Test("a stream header claiming a device past off_t's range is refused by the reader and apply creates nothing")
    func streamDeviceSizePastOffT() throws {
        let scratch = try Scratch()
        try streamClaiming(deviceSize: UInt64.max - 4095, at: scratch.path("stream"))
        let fd = try FileDescriptor.open(scratch.path("stream"), .readOnly)
        defer { try? fd.close() }
        let readerError = #expect(throws: CopyError.self) { _ = try DeltaStreamReader(descriptor: fd) }
        #expect("\(readerError.map { "\($0)" } ?? "")".contains("past the largest a device can have"))

        let input = try FileDescriptor.open(scratch.path("stream"), .readOnly)
        defer { try? input.close() }
        #expect(throws: SnapstackError.self) { _ = try Image.apply(from: input, to: scratch.path("image")) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: scratch.directory) == ["stream"])
    }

    @Test("a tiny full stream claiming a 4 EiB device is refused before it creates anything (not even its lock file), naming the space it would need")
    func tinyStreamClaimingAHugeDevice() throws {
        let scratch = try Scratch()
        let claimed: UInt64 = 1 << 62
        let fd = try FileDescriptor.open(scratch.path("stream"), .writeOnly, options: [.create, .truncate], permissions: .ownerReadWrite)
        let writer = try DeltaStreamWriter(descriptor: fd, header: DeltaStreamHeader(
            blockSize: 512, deviceSize: claimed, payload: try manifest(deviceSize: claimed, blockSize: 512).encoded()))
        try writer.finish()
        try fd.close()
        #expect(try FileManager.default.attributesOfItem(atPath: scratch.path("stream").string)[.size] as? Int ?? .max < 4096)

        let input = try FileDescriptor.open(scratch.path("stream"), .readOnly)
        defer { try? input.close() }
        let error = #expect(throws: SnapstackError.self) { _ = try Image.apply(from: input, to: scratch.path("image")) }
        #expect(error?.kind == .refused)
        #expect("\(error.map { "\($0)" } ?? "")".contains("\((claimed / 512) * 16) bytes of checksums"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: scratch.directory) == ["stream"])
    }

    /// A whole, valid full stream of a 16 KiB device.
    private func fullStream(at path: FilePath, scratch: Scratch) throws {
        let source = scratch.path("source")
        var generator = SystemRandomNumberGenerator()
        try Data((0..<16384).map { _ in UInt8.random(in: 0...255, using: &generator) }).write(to: URL(fileURLWithPath: source.string))
        let fd = try FileDescriptor.open(path, .writeOnly, options: [.create, .truncate], permissions: .ownerReadWrite)
        defer { try? fd.close() }
        let writer = try DeltaStreamWriter(descriptor: fd, header: DeltaStreamHeader(
            blockSize: 4096, deviceSize: 16384, payload: try manifest(deviceSize: 16384, blockSize: 4096).encoded()))
        _ = try CopyEngine(source: source, options: CopyOptions(blockSize: 4096)).run(extents: [Extent(offset: 0, length: 16384)], into: writer)
        try writer.finish()
    }

    private func applyFile(_ stream: FilePath, to image: FilePath) throws -> ApplyOutcome {
        let input = try FileDescriptor.open(stream, .readOnly)
        defer { try? input.close() }
        return try Image.apply(from: input, to: image)
    }

    @Test("apply does not follow a symbolic link planted at the image's or the checksum file's path")
    func plantedLinks() throws {
        let scratch = try Scratch()
        try fullStream(at: scratch.path("stream"), scratch: scratch)
        try FileManager.default.createDirectory(atPath: scratch.path("elsewhere").string, withIntermediateDirectories: false)
        let victim = scratch.path("elsewhere/victim")
        let kept = Data("a file root must not rewrite\n".utf8)
        try kept.write(to: URL(fileURLWithPath: victim.string))

        // The checksum file's name points at an existing file: it would be truncated and overwritten.
        try FileManager.default.createSymbolicLink(atPath: scratch.path("a.sums").string, withDestinationPath: victim.string)
        #expect(throws: (any Error).self) { _ = try applyFile(scratch.path("stream"), to: scratch.path("a")) }
        #expect(try Data(contentsOf: URL(fileURLWithPath: victim.string)) == kept)

        // The image's name points where no file is yet: the image would be created there.
        let planted = scratch.path("elsewhere/created")
        try FileManager.default.createSymbolicLink(atPath: scratch.path("b").string, withDestinationPath: planted.string)
        #expect(throws: (any Error).self) { _ = try applyFile(scratch.path("stream"), to: scratch.path("b")) }
        #expect(!FileManager.default.fileExists(atPath: planted.string))
        #expect(try FileManager.default.contentsOfDirectory(atPath: scratch.path("elsewhere").string) == ["victim"])
    }

    @Test("a second writer of one image is refused at once while the first holds it, and creates nothing")
    func oneWriterPerImage() throws {
        let scratch = try Scratch()
        try fullStream(at: scratch.path("stream"), scratch: scratch)
        let image = scratch.path("image")
        // The first writer, as another process holds it: flock on IMAGE.lock.
        let holder = open(scratch.path("image.lock").string, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        #expect(holder >= 0)
        #expect(flock(holder, LOCK_EX) == 0)
        let error = #expect(throws: SnapstackError.self) { _ = try applyFile(scratch.path("stream"), to: image) }
        #expect(error?.kind == .locked)
        #expect(error?.what == "another export or apply is working on \(image)")
        #expect(!FileManager.default.fileExists(atPath: image.string))
        #expect(!FileManager.default.fileExists(atPath: ImageManifest.path(forImage: image).string))
        close(holder)

        // Released: the same stream applies, and the image verifies.
        let outcome = try applyFile(scratch.path("stream"), to: image)
        #expect(outcome.manifest.state == .complete)
        try Image.verify(image)

    }
}
