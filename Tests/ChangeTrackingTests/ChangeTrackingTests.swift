import BlockIO
import Foundation
import SystemPackage
import Testing
@testable import ChangeTracking

/// Metadata images the kernel wrote in the VM, with `era_invalidate`'s answers captured right
/// after the metadata snapshot was taken (before the live metadata moved on).
let fixtureNames = ["era-small", "era-large"]

@Suite("dm-era metadata captured from the kernel")
struct CapturedMetadataTests {
    @Test("the native reader gives era_invalidate's ranges for every captured era", arguments: fixtureNames)
    func matchesEraInvalidate(fixture: String) throws {
        let answers = try capturedAnswers(fixture: fixture)
        #expect(answers.count >= 3, "too few captured answers for \(fixture)")
        let path = try MetadataImage(fixture: fixture).write()
        defer { MetadataImage.remove(path) }
        let metadata = try EraMetadata(path: path)
        for (since, xml) in answers {
            let expected = try invalidatedRanges(xml: xml)
            let ranges = try metadata.changedBlocks(since: since)
            #expect(ranges == expected, "since era \(since)")
        }
    }

    @Test("the live superblock agrees with the status line captured with it", arguments: fixtureNames)
    func superblockMatchesStatus(fixture: String) throws {
        let status = try CapturedEraStatus(fixture: fixture)
        let path = try MetadataImage(fixture: fixture).write()
        defer { MetadataImage.remove(path) }
        let metadata = try EraMetadata(path: path)
        let superblock = metadata.superblock
        #expect(superblock.location == 0)
        #expect(superblock.version == 1)
        #expect(superblock.currentEra == status.currentEra)
        #expect(superblock.metadataSnapshot == status.heldRoot)
        #expect(superblock.metadataSnapshot != nil)
        // Both fixtures track 4 KiB blocks (8 sectors); the device length rounds up to blocks.
        #expect(superblock.blockSize == Sectors(8))
        #expect(superblock.blockCount == (status.length + 7) / 8)
    }

    @Test("the held snapshot is the superblock of an earlier era, at its own block", arguments: fixtureNames)
    func snapshotSuperblock(fixture: String) throws {
        let image = try MetadataImage(fixture: fixture)
        let path = try image.write()
        defer { MetadataImage.remove(path) }
        let metadata = try EraMetadata(path: path)
        let snapshot = try metadata.snapshotSuperblock()
        #expect(snapshot.location == metadata.superblock.metadataSnapshot)
        #expect(snapshot.currentEra < metadata.superblock.currentEra, "the live metadata moved on after the snapshot")
        #expect(snapshot.blockCount == metadata.superblock.blockCount)
        #expect(snapshot.metadataSnapshot == nil)
        // Nothing was written in the snapshot's own era before it was taken.
        #expect(try metadata.changedBlocks(since: snapshot.currentEra).isEmpty)
        #expect(try metadata.changedBlocks(since: .max).isEmpty)
        // Era 0 is every block: entries of blocks never written are 0, and 0 >= 0.
        #expect(try metadata.changedBlocks(since: 0) == [0..<snapshot.blockCount])
        let inventory = try metadata.inventory()
        #expect(inventory.snapshot == snapshot)
        #expect(!inventory.archivedEras.isEmpty, "take_metadata_snap archives the era it ends")
        #expect(inventory.archivedEras.allSatisfy { $0 < snapshot.currentEra })
        #expect(inventory.highestDigestedEra < snapshot.currentEra)
    }

    @Test("digested eras and archived writesets both count in the captured snapshots")
    func bothSourcesPresent() throws {
        for fixture in fixtureNames {
            let path = try MetadataImage(fixture: fixture).write()
            defer { MetadataImage.remove(path) }
            let inventory = try EraMetadata(path: path).inventory()
            #expect(inventory.digestedBlocks > 0, "\(fixture): nothing digested into the era array")
            #expect(!inventory.archivedEras.isEmpty, "\(fixture): no archived writeset")
        }
    }

    @Test("the stored checksums are crc32c(~0, bytes 4..<4096) xor the kernel's constant")
    func checksumsAgreeWithReference() throws {
        #expect(ReferenceCRC32C.raw(Array("123456789".utf8)) ^ 0xFFFF_FFFF == 0xE306_9283)
        let image = try MetadataImage(fixture: "era-small")
        let stored = image.u32(0, SuperblockField.checksum)
        #expect(ReferenceCRC32C.raw(image.block(0)[4...]) ^ KernelXor.superblock == stored)
        image.block(0).withUnsafeBytes { raw in
            #expect(Checksum.block(raw, kind: .superblock) == stored)
        }
        // Every stored block is one of the three kinds, and the reader's checksum agrees.
        for (number, bytes) in image.blocks {
            let reference = ReferenceCRC32C.raw(bytes[4...])
            let storedChecksum = image.u32(number, 0)
            let kind: BlockKind? = [BlockKind.superblock, .btreeNode, .arrayBlock]
                .first { reference ^ $0.rawValue == storedChecksum }
            guard let kind else { continue }  // a freed block the kernel left behind may be anything
            bytes.withUnsafeBytes { raw in #expect(Checksum.block(raw, kind: kind) == storedChecksum) }
        }
    }
}

@Suite("damaged or foreign metadata is refused with the block named")
struct DamagedMetadataTests {
    /// Expects `body` to throw an `EraMetadataError` and returns it.
    func refusal(_ image: MetadataImage, _ body: (EraMetadata) throws -> Void = { _ in }) throws -> EraMetadataError {
        let path = try image.write()
        defer { MetadataImage.remove(path) }
        do {
            let metadata = try EraMetadata(path: path)
            try body(metadata)
        } catch let error as EraMetadataError {
            #expect(error.path == path)
            #expect(error.description.contains(path.string))
            return error
        }
        throw FixtureError(description: "the damaged image was read without an error")
    }

    @Test("metadata of another block size or device size than the device's is refused, not read as offsets of the wrong bytes",
          arguments: fixtureNames)
    func foreignGeometry(fixture: String) throws {
        let image = try MetadataImage(fixture: fixture)
        let path = try image.write()
        defer { MetadataImage.remove(path) }
        let metadata = try EraMetadata(path: path)
        let snapshot = try metadata.snapshotSuperblock()
        let own = EraGeometry(blockSize: snapshot.blockSize, blockCount: snapshot.blockCount)
        #expect(try metadata.changedBlocks(since: 1, expecting: own) == metadata.changedBlocks(since: 1))
        // The device's size, as the database records it, gives the same geometry.
        let deviceBytes = snapshot.blockCount * snapshot.blockSize.bytes.rawValue - 512
        #expect(EraGeometry(blockSize: snapshot.blockSize, deviceBytes: deviceBytes) == own)

        for foreign in [EraGeometry(blockSize: Sectors(snapshot.blockSize.rawValue * 2), blockCount: snapshot.blockCount),
                        EraGeometry(blockSize: snapshot.blockSize, blockCount: snapshot.blockCount / 2),
                        EraGeometry(blockSize: snapshot.blockSize, deviceBytes: deviceBytes + 2 * snapshot.blockSize.bytes.rawValue)] {
            let error = try refusal(image) { _ = try $0.changedBlocks(since: 1, expecting: foreign) }
            #expect(error.reason == .geometryMismatch(expected: foreign, found: own))
            #expect(error.description.contains("it tracks \(own), the device has \(foreign)"))
        }
    }

    @Test("a snapshot claiming more data blocks than its metadata could index is refused before the bitmap is allocated")
    func blockCountPastWhatTheArrayIndexes() throws {
        var image = try MetadataImage(fixture: "era-small")
        let snapshot = image.u64(0, SuperblockField.metadataSnapshot)
        image.set(snapshot, SuperblockField.blockCount, u32: .max)
        image.reseal(snapshot, xor: KernelXor.superblock)
        let error = try refusal(image) { _ = try $0.changedBlocks(since: 1) }
        #expect(error.structure == .snapshotSuperblock)
        #expect(error.description.contains("\(UInt32.max) data blocks cannot be indexed"))
    }

    @Test("a flipped byte in the superblock is a checksum mismatch at block 0")
    func superblockChecksum() throws {
        var image = try MetadataImage(fixture: "era-small")
        let stored = image.u32(0, SuperblockField.checksum)
        image.flip(0, 1000)
        let error = try refusal(image)
        guard case .checksumMismatch(.superblock, block: 0, stored: let reported, computed: let computed) = error.reason else {
            Issue.record("unexpected error: \(error)")
            return
        }
        #expect(reported == stored)
        #expect(computed == ReferenceCRC32C.raw(image.block(0)[4...]) ^ KernelXor.superblock)
        #expect(error.description.contains("checksum mismatch in the superblock at block 0"))
    }

    @Test("a superblock without dm-era's magic is named as such")
    func badMagic() throws {
        var image = try MetadataImage(fixture: "era-small")
        image.set(0, SuperblockField.magic, u64: 0x1234_5678)
        let error = try refusal(image)
        #expect(error.reason == .badMagic(block: 0, found: 0x1234_5678))
        #expect(error.description.contains("bad magic 305419896"))
    }

    @Test("an all-zero device is not era metadata")
    func zeros() throws {
        let error = try refusal(MetadataImage(blockCount: 16, blocks: [:]))
        #expect(error.reason == .badMagic(block: 0, found: 0))
    }

    @Test("a file smaller than one block, and a missing one, are refused")
    func tooSmallOrMissing() throws {
        let small = try refusal(MetadataImage(blockCount: 0, blocks: [:]))
        #expect(small.reason == .tooSmall(bytes: 0))
        let missing = FilePath("/nonexistent-\(UUID().uuidString)/metadata")
        #expect(throws: EraMetadataError(path: missing, reason: .open(.noSuchFileOrDirectory))) {
            _ = try EraMetadata(path: missing)
        }
    }

    @Test("a version other than 1 is refused, even with a valid checksum")
    func unsupportedVersion() throws {
        var image = try MetadataImage(fixture: "era-small")
        image.set(0, SuperblockField.version, u32: 2)
        image.reseal(0, xor: KernelXor.superblock)
        #expect(try refusal(image).reason == .unsupportedVersion(2))
    }

    @Test("a superblock copied to another block says where it belongs")
    func wrongLocation() throws {
        var image = try MetadataImage(fixture: "era-small")
        image.set(0, SuperblockField.blockNumber, u64: 5)
        image.reseal(0, xor: KernelXor.superblock)
        #expect(try refusal(image).reason == .wrongLocation(.superblock, block: 0, recorded: 5))
    }

    @Test("without a held snapshot the error names take_metadata_snap")
    func noSnapshot() throws {
        var image = try MetadataImage(fixture: "era-small")
        image.set(0, SuperblockField.metadataSnapshot, u64: 0)
        image.reseal(0, xor: KernelXor.superblock)
        let error = try refusal(image) { _ = try $0.changedBlocks(since: 1) }
        #expect(error.reason == .noMetadataSnapshot)
        #expect(error.description.contains("take_metadata_snap"))
    }

    @Test("a flipped byte in the snapshot's superblock copy names that block")
    func snapshotChecksum() throws {
        var image = try MetadataImage(fixture: "era-small")
        let snapshot = image.u64(0, SuperblockField.metadataSnapshot)
        image.flip(snapshot, 2000)
        let error = try refusal(image) { _ = try $0.changedBlocks(since: 1) }
        #expect(error.structure == .snapshotSuperblock)
        #expect(error.block == snapshot)
        #expect(error.description.contains("metadata snapshot's superblock at block \(snapshot)"))
    }

    @Test("a flipped byte in a btree node is a checksum mismatch naming the node's block",
          arguments: [(SuperblockField.eraArrayRoot, EraStructure.eraArrayTree),
                      (SuperblockField.writesetTreeRoot, EraStructure.writesetTree)])
    func nodeChecksum(field: Int, structure: EraStructure) throws {
        var image = try MetadataImage(fixture: "era-small")
        let snapshot = image.u64(0, SuperblockField.metadataSnapshot)
        let node = image.u64(snapshot, field)
        // A key of the node: inside the checksummed bytes, outside the header.
        image.flip(node, 40)
        let error = try refusal(image) { _ = try $0.changedBlocks(since: 1) }
        guard case .checksumMismatch(structure, block: node, stored: _, computed: _) = error.reason else {
            Issue.record("unexpected error: \(error)")
            return
        }
        #expect(error.description.contains("checksum mismatch in the \(structure) at block \(node)"))
    }

    @Test("a flipped byte in an era array block names that block")
    func arrayBlockChecksum() throws {
        var image = try MetadataImage(fixture: "era-small")
        let snapshot = image.u64(0, SuperblockField.metadataSnapshot)
        let root = image.u64(snapshot, SuperblockField.eraArrayRoot)
        // The root of the small fixture's era array is a leaf: its first value is array block 0.
        #expect(image.u32(root, 4) == 2, "the era array's root is not a leaf")
        let arrayBlock = image.u64(root, 32 + Int(image.u32(root, 20)) * 8)
        image.flip(arrayBlock, 100)
        let error = try refusal(image) { _ = try $0.changedBlocks(since: 1) }
        #expect(error.structure == .eraArrayBlock)
        #expect(error.block == arrayBlock)
    }

    @Test("an internal node that points back at itself is a loop")
    func loop() throws {
        var image = try MetadataImage(fixture: "era-large")
        let snapshot = image.u64(0, SuperblockField.metadataSnapshot)
        let root = image.u64(snapshot, SuperblockField.eraArrayRoot)
        #expect(image.u32(root, 4) == 1, "the large fixture's era array root is not an internal node")
        #expect(image.u32(root, 16) >= 2)
        // Child 1 becomes the root itself; child 0 is walked first and is intact.
        let capacity = Int(image.u32(root, 20))
        image.set(root, 32 + capacity * 8 + 8, u64: root)
        image.reseal(root, xor: KernelXor.btreeNode)
        let error = try refusal(image) { _ = try $0.changedBlocks(since: 1) }
        #expect(error.reason == .loop(.eraArrayTree, block: root))
        #expect(error.description.contains("loop"))
    }

    @Test("a child past the end of the metadata device is out of range")
    func childOutOfRange() throws {
        var image = try MetadataImage(fixture: "era-large")
        let snapshot = image.u64(0, SuperblockField.metadataSnapshot)
        let root = image.u64(snapshot, SuperblockField.eraArrayRoot)
        let capacity = Int(image.u32(root, 20))
        image.set(root, 32 + capacity * 8, u64: image.blockCount + 7)
        image.reseal(root, xor: KernelXor.btreeNode)
        let error = try refusal(image) { _ = try $0.changedBlocks(since: 1) }
        #expect(error.reason == .outOfRange(.eraArrayTree, block: image.blockCount + 7, metadataBlocks: image.blockCount))
    }

    @Test("keys out of order in a node are malformed")
    func keysOutOfOrder() throws {
        var image = try MetadataImage(fixture: "era-large")
        let snapshot = image.u64(0, SuperblockField.metadataSnapshot)
        let root = image.u64(snapshot, SuperblockField.eraArrayRoot)
        image.set(root, 32 + 8, u64: 0)  // key 1 = key 0
        image.reseal(root, xor: KernelXor.btreeNode)
        let error = try refusal(image) { _ = try $0.changedBlocks(since: 1) }
        guard case .malformed(.eraArrayTree, block: root, _) = error.reason else {
            Issue.record("unexpected error: \(error)")
            return
        }
    }
}

@Suite("changed ranges")
struct ChangedRangesTests {
    @Test("coalescing sorts, merges overlapping and adjacent ranges and drops empty ones")
    func coalescing() {
        let ranges = ChangedRanges(coalescing: [10..<12, 0..<2, 5..<5, 2..<3, 11..<15, 20..<21, 15..<16])
        #expect(ranges.ranges == [0..<3, 10..<16, 20..<21])
        #expect(ranges.blockCount == 10)
        #expect(ChangedRanges(coalescing: []).ranges.isEmpty)
    }

    @Test("bitmap runs across words, whole words and a limit inside a word")
    func bitmap() {
        // Bits 0, 2-3, 63-65 (across a word boundary), 128-191 (a whole word), 192-199 cut at 196.
        let bitmap: [UInt64] = [1 | 0b1100 | 1 << 63, 0b11, .max, 0xFF]
        #expect(ChangedRanges(bitmap: bitmap, limit: 196).ranges == [0..<1, 2..<4, 63..<66, 128..<196])
        #expect(ChangedRanges(bitmap: [.max, .max], limit: 128).ranges == [0..<128])
        #expect(ChangedRanges(bitmap: [.max, .max], limit: 70).ranges == [0..<70])
        #expect(ChangedRanges(bitmap: [0, 1 << 63], limit: 128).ranges == [127..<128])
        #expect(ChangedRanges(bitmap: [0, 0], limit: 128).ranges.isEmpty)
        #expect(ChangedRanges(bitmap: [], limit: 0).ranges.isEmpty)
    }

    @Test("byte ranges cut the partial last block at the device's end")
    func byteRanges() {
        let ranges = ChangedRanges(coalescing: [0..<1, 3..<5])
        // 5 blocks of 64 KiB; the device ends 4 KiB into block 4.
        let device = Bytes(266_240)
        let expected: [Range<UInt64>] = [0..<65536, 196_608..<266_240]
        #expect(ranges.byteRanges(blockSize: Sectors(128), deviceSize: device) == expected)
    }
}
