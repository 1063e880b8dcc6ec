import CopyEngine
import Foundation
import Images
import Snapstack
import SnapstackErrors
import SystemPackage
import Testing

/// Images made and updated through delta streams, then verified, on plain files: the unit tier
/// of what `export`, `apply` and `verify` do with an image, its manifest and its checksums.
final class Scratch {
    let directory: String
    init() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("snapstack-image-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: directory) }
    func path(_ name: String) -> FilePath { FilePath(directory + "/" + name) }
}

private let blockSize = 65536
/// Not a multiple of the block size, so that the last block is short.
private let deviceSize: UInt64 = 40 * 65536 + 12288

private func randomBytes(_ count: Int) -> [UInt8] {
    var generator = SystemRandomNumberGenerator()
    var words = (0..<(count + 7) / 8).map { _ in generator.next() }
    return words.withUnsafeBytes { Array($0.prefix(count)) }
}

/// A "device" file: random blocks with some zero blocks among them.
private func makeSource(_ path: FilePath) throws -> [UInt8] {
    var bytes = randomBytes(Int(deviceSize))
    for zeroBlock in [3, 4, 17, 40] {
        let start = zeroBlock * blockSize
        for i in start..<min(start + blockSize, bytes.count) { bytes[i] = 0 }
    }
    try Data(bytes).write(to: URL(fileURLWithPath: path.string))
    return bytes
}

private func manifest(export id: String, base: String?, snapshot: String) -> ImageManifest {
    ImageManifest(
        state: .complete,
        export: .init(id: id, kind: base == nil ? "full" : "incremental", base: base, chain: [], createdAt: Date(), completedAt: Date()),
        device: .init(id: "dev00001", name: "data", sizeBytes: deviceSize),
        snapshot: .init(id: snapshot, name: snapshot, era: 3, createdAt: Date()),
        sinceEra: base == nil ? nil : 3, blockSize: blockSize, checksumFile: "")
}

/// A delta stream of `extents` of `source`, as `export --to - --format delta` writes it.
private func writeStream(_ stream: FilePath, source: FilePath, extents: [Extent], manifest: ImageManifest) throws {
    let fd = try FileDescriptor.open(stream, .writeOnly, options: [.create, .truncate], permissions: .ownerReadWrite)
    defer { try? fd.close() }
    let writer = try DeltaStreamWriter(descriptor: fd, header: DeltaStreamHeader(
        blockSize: blockSize, deviceSize: deviceSize, payload: try manifest.encoded()))
    let engine = try CopyEngine(source: source, options: CopyOptions(blockSize: blockSize))
    _ = try engine.run(extents: extents, into: writer)
    try writer.finish()
}

private func apply(_ stream: FilePath, to image: FilePath) throws -> ApplyOutcome {
    let fd = try FileDescriptor.open(stream, .readOnly)
    defer { try? fd.close() }
    return try Image.apply(from: fd, to: image)
}

private func contents(_ path: FilePath) throws -> [UInt8] {
    [UInt8](try Data(contentsOf: URL(fileURLWithPath: path.string)))
}

private func allocatedBytes(_ path: FilePath) throws -> Int {
    var status = stat()
    #expect(stat(path.string, &status) == 0)
    return Int(status.st_blocks) * 512
}

@Test func fullStreamMakesASparseVerifiedImage() throws {
    let scratch = try Scratch()
    let source = scratch.path("device"), stream = scratch.path("full.delta"), image = scratch.path("data.img")
    let bytes = try makeSource(source)
    try writeStream(stream, source: source, extents: [Extent(offset: 0, length: deviceSize)],
                    manifest: manifest(export: "e0000001", base: nil, snapshot: "s1"))
    let outcome = try apply(stream, to: image)

    #expect(try contents(image) == bytes)
    #expect(outcome.manifest.state == .complete)
    #expect(outcome.manifest.export.chain == ["e0000001"])
    #expect(outcome.manifest.blockCount == 41)
    // Zero blocks stayed holes (4 zero blocks, one of them the short last block).
    #expect(try allocatedBytes(image) <= Int(deviceSize) - 3 * blockSize)
    let report = try Image.verify(image)
    #expect(report.isSound)
    #expect(report.blocksChecked == 41)
    // The checksum file holds each block's XXH3-128 in order.
    let sums = try contents(FilePath(image.string + ".sums"))
    #expect(sums.count == 41 * 16)
    let block7 = Array(bytes[(7 * blockSize)..<(8 * blockSize)])
    #expect(Array(sums[(7 * 16)..<(8 * 16)]) == Digest128.of(block7).canonicalBytes)
}

@Test func verifyNamesTheFirstBadBlock() throws {
    let scratch = try Scratch()
    let source = scratch.path("device"), stream = scratch.path("full.delta"), image = scratch.path("data.img")
    _ = try makeSource(source)
    try writeStream(stream, source: source, extents: [Extent(offset: 0, length: deviceSize)],
                    manifest: manifest(export: "e0000001", base: nil, snapshot: "s1"))
    _ = try apply(stream, to: image)
    let handle = try FileHandle(forUpdating: URL(fileURLWithPath: image.string))
    for (block, delta) in [(9, 1234), (22, 5)] {
        try handle.seek(toOffset: UInt64(block * blockSize + delta))
        let byte = try #require(try handle.read(upToCount: 1)?.first)
        try handle.seek(toOffset: UInt64(block * blockSize + delta))
        try handle.write(contentsOf: [byte ^ 0x40])
    }
    try handle.close()
    let report = try Image.verify(image)
    #expect(report.firstBadBlock == 9)
    #expect(report.badBlocks == 2)
}

@Test func incrementalStreamUpdatesOnlyTheImageOfItsBase() throws {
    let scratch = try Scratch()
    let source = scratch.path("device"), image = scratch.path("data.img")
    var bytes = try makeSource(source)
    try writeStream(scratch.path("full.delta"), source: source, extents: [Extent(offset: 0, length: deviceSize)],
                    manifest: manifest(export: "e0000001", base: nil, snapshot: "s1"))
    _ = try apply(scratch.path("full.delta"), to: image)

    // Block 1 rewritten, block 5 zeroed, block 3 (was zero) written, the short last block rewritten.
    for block in [1, 3, 40] {
        let start = block * blockSize
        let end = min(start + blockSize, bytes.count)
        bytes.replaceSubrange(start..<end, with: randomBytes(end - start))
    }
    for i in (5 * blockSize)..<(6 * blockSize) { bytes[i] = 0 }
    try Data(bytes).write(to: URL(fileURLWithPath: source.string))
    let changed = [Extent(offset: UInt64(blockSize), length: UInt64(blockSize)),
                   Extent(offset: 3 * UInt64(blockSize), length: UInt64(blockSize)),
                   Extent(offset: 5 * UInt64(blockSize), length: UInt64(blockSize)),
                   Extent(offset: 40 * UInt64(blockSize), length: deviceSize - 40 * UInt64(blockSize))]
    try writeStream(scratch.path("incr.delta"), source: source, extents: changed,
                    manifest: manifest(export: "e0000002", base: "e0000001", snapshot: "s2"))

    // Onto an image that does not hold the base: refused, image untouched.
    let other = scratch.path("other.img")
    try writeStream(scratch.path("other.delta"), source: source, extents: [Extent(offset: 0, length: deviceSize)],
                    manifest: manifest(export: "e0000009", base: nil, snapshot: "s9"))
    _ = try apply(scratch.path("other.delta"), to: other)
    let otherBefore = try contents(other)
    #expect(throws: SnapstackError.self) { try apply(scratch.path("incr.delta"), to: other) }
    #expect(try contents(other) == otherBefore)
    #expect(try ImageManifest.read(forImage: other)?.export.id == "e0000009")

    let outcome = try apply(scratch.path("incr.delta"), to: image)
    #expect(try contents(image) == bytes)
    #expect(outcome.manifest.export.chain == ["e0000001", "e0000002"])
    #expect(outcome.manifest.export.base == "e0000001")
    #expect(try Image.verify(image).isSound)
    // The same stream again is refused: the image now holds e0000002.
    #expect(throws: SnapstackError.self) { try apply(scratch.path("incr.delta"), to: image) }
}

@Test func aTruncatedStreamLeavesAnIncompleteImageThatTheWholeStreamFinishes() throws {
    let scratch = try Scratch()
    let source = scratch.path("device"), stream = scratch.path("full.delta"), image = scratch.path("data.img")
    let bytes = try makeSource(source)
    try writeStream(stream, source: source, extents: [Extent(offset: 0, length: deviceSize)],
                    manifest: manifest(export: "e0000001", base: nil, snapshot: "s1"))
    let whole = try contents(stream)
    let cut = scratch.path("cut.delta")
    try Data(whole.prefix(whole.count / 2)).write(to: URL(fileURLWithPath: cut.string))

    #expect(throws: SnapstackError.self) { try apply(cut, to: image) }
    #expect(try ImageManifest.read(forImage: image)?.state == .incomplete)
    let error = #expect(throws: SnapstackError.self) { try Image.verify(image) }
    #expect(error?.kind == .verificationFailed)
    #expect("\(error.map { "\($0)" } ?? "")".contains("incomplete"))

    _ = try apply(stream, to: image)
    #expect(try contents(image) == bytes)
    #expect(try Image.verify(image).isSound)
}

@Test func aDamagedChecksumFileIsToldFromADamagedImage() throws {
    let scratch = try Scratch()
    let source = scratch.path("device"), stream = scratch.path("full.delta"), image = scratch.path("data.img")
    _ = try makeSource(source)
    try writeStream(stream, source: source, extents: [Extent(offset: 0, length: deviceSize)],
                    manifest: manifest(export: "e0000001", base: nil, snapshot: "s1"))
    _ = try apply(stream, to: image)
    let sums = URL(fileURLWithPath: image.string + ".sums")
    var bytes = try Data(contentsOf: sums)
    bytes[100] ^= 0xff
    try bytes.write(to: sums)
    let error = #expect(throws: SnapstackError.self) { try Image.verify(image) }
    #expect("\(error.map { "\($0)" } ?? "")".contains("checksum file"))
}

@Test func aManifestFromANewerBuildIsRefused() throws {
    let scratch = try Scratch()
    var newer = manifest(export: "e0000001", base: nil, snapshot: "s1")
    newer.version = ImageManifest.currentVersion + 1
    let data = try newer.encoded()
    let error = #expect(throws: SnapstackError.self) { try ImageManifest.decode(data, source: scratch.directory) }
    #expect("\(error.map { "\($0)" } ?? "")".contains("newer snapstack"))
}
