// The dm-era metadata reader: superblock, writesets and era array into changed ranges.
import BlockIO
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// What a held metadata snapshot contains, for diagnostics: which eras still have their own
/// writeset and how much the kernel has already digested into the era array.
public struct EraInventory: Sendable, Equatable {
    /// The snapshot's superblock copy.
    public var snapshot: EraSuperblock
    /// The eras of the archived writesets in the snapshot's writeset tree, ascending.
    public var archivedEras: [UInt32]
    /// The data blocks whose era array entry is not 0 (some digested era wrote them).
    public var digestedBlocks: UInt64
    /// The highest era in the era array.
    public var highestDigestedEra: UInt32
}

/// dm-era's metadata on a device or in a file, read natively (no thin-provisioning-tools).
///
/// The era target keeps, per data block, the era it was last written in, in two places: the era
/// array (eras the kernel has already *digested*) and archived writesets (one bitset per era, in
/// a btree keyed by era, folded into the array asynchronously and removed from the tree once
/// folded). A block was written in era `E` or later when its era array entry is `>= E`, or when
/// it is marked in an archived writeset of an era `>= E`. `take_metadata_snap` archives the
/// current writeset, starts a new era, commits, and keeps a copy of the superblock whose two
/// roots (writeset tree, era array) stay valid until `drop_metadata_snap`; the copy's current
/// writeset is not kept, so only the archived eras — every era before the snapshot's own — are
/// read. The kernel goes on writing the live metadata meanwhile; the snapshot does not change.
public final class EraMetadata {
    private let device: MetadataDevice

    /// The live superblock as last read: at `init`, and again at each call that looks for the
    /// held snapshot (its location changes with every take/drop).
    public private(set) var superblock: EraSuperblock

    /// The size of the metadata device in 4 KiB blocks.
    public var metadataBlockCount: UInt64 { device.blockCount }
    /// Whether reads bypass the page cache (O_DIRECT); false where the file system refuses it.
    public var usesDirectIO: Bool { device.directIO }
    public var path: FilePath { device.path }

    /// Opens the metadata device or file read-only (`open(2)` with `O_DIRECT` when possible —
    /// the kernel writes it while we read; buffered when O_DIRECT is refused, e.g. on tmpfs; a
    /// metadata snapshot makes the held copy stable) and reads and checks the superblock at
    /// block 0 (magic, crc32c, location, version, metadata block size).
    public init(path: FilePath) throws(EraMetadataError) {
        device = try MetadataDevice(path: path)
        superblock = try Self.readLiveSuperblock(device)
    }

    /// The kernel rewrites block 0 in place at every commit (every first write to a block in an
    /// era, every message), so a read can meet a half-written superblock: a checksum mismatch
    /// there is read again a few times before it counts. Every other block the snapshot
    /// reaches is never written while the snapshot holds it.
    private static func readLiveSuperblock(_ device: borrowing MetadataDevice) throws(EraMetadataError) -> EraSuperblock {
        var attempt = 1
        while true {
            do {
                return try EraSuperblock(try device.read(0, as: .superblock), path: device.path, structure: .superblock)
            } catch {
                guard case .checksumMismatch = error.reason, attempt < 3 else { throw error }
                attempt += 1
                usleep(10_000)
            }
        }
    }

    /// Re-reads the live superblock and returns the held snapshot's superblock copy; throws
    /// `noMetadataSnapshot` when none is held.
    public func snapshotSuperblock() throws(EraMetadataError) -> EraSuperblock {
        superblock = try Self.readLiveSuperblock(device)
        guard let location = superblock.metadataSnapshot else {
            throw EraMetadataError(path: path, reason: .noMetadataSnapshot)
        }
        let snapshot = try EraSuperblock(try device.read(location, as: .snapshotSuperblock), path: path,
                                         structure: .snapshotSuperblock)
        // The copy is the live superblock of the moment the snapshot was taken; a different
        // block size would mean the block is not that copy.
        guard snapshot.blockSize == superblock.blockSize else {
            throw EraMetadataError(path: path, reason: .malformed(
                .snapshotSuperblock, block: location,
                "data block size \(snapshot.blockSize) differs from the live superblock's \(superblock.blockSize)"))
        }
        return snapshot
    }

    /// Block ranges (end-exclusive, sorted, coalesced) written in era `since` or later, read from
    /// the held metadata snapshot: every block whose era array entry is `>= since`, and every
    /// block marked in an archived writeset of an era `>= since`. `since` 0 therefore gives the
    /// whole device (every entry is `>= 0`), and an era at or past the snapshot's own gives
    /// nothing. Throws `noMetadataSnapshot` (naming `take_metadata_snap`) when none is held.
    ///
    /// This is what `era_invalidate --metadata-snapshot --written-since ERA` prints, with two
    /// differences: writeset bits past the device's blocks (from before a shrink) are not
    /// reported, and the snapshot is read — thin-provisioning-tools 0.9.0 reads the *live*
    /// superblock's roots even with `--metadata-snapshot`, so the two agree only while nothing
    /// changed since the snapshot was taken.
    ///
    /// With `expected`, the snapshot must describe exactly those data blocks: block numbers are
    /// only offsets on the device they were counted for, so metadata of another block size or
    /// device size would name the wrong bytes, silently.
    public func changedBlocks(since era: UInt32, expecting expected: EraGeometry? = nil) throws(EraMetadataError) -> [Range<UInt64>] {
        try changes(since: era, expecting: expected).ranges
    }

    /// `changedBlocks(since:expecting:)` as `ChangedRanges`.
    public func changes(since era: UInt32, expecting expected: EraGeometry? = nil) throws(EraMetadataError) -> ChangedRanges {
        let snapshot = try snapshotSuperblock()
        let blocks = snapshot.blockCount
        let found = EraGeometry(blockSize: snapshot.blockSize, blockCount: blocks)
        if let expected, expected != found {
            throw EraMetadataError(path: path, reason: .geometryMismatch(expected: expected, found: found))
        }
        // The era array holds an entry for every data block, so metadata of this size cannot
        // index more; a larger count is damage, and must not become the bitmap's allocation.
        let indexable = metadataBlockCount.multipliedReportingOverflow(by: UInt64(arrayEntriesPerBlock))
        guard indexable.overflow || blocks <= indexable.partialValue else {
            throw EraMetadataError(path: path, reason: .malformed(
                .snapshotSuperblock, block: snapshot.location,
                "\(blocks) data blocks cannot be indexed by \(metadataBlockCount) metadata blocks"))
        }
        var bitmap = [UInt64](repeating: 0, count: Int((blocks + 63) / 64))

        if era == 0 {
            // Every entry is >= 0; the array is still walked so that damage is found.
            for index in bitmap.indices { bitmap[index] = .max }
        }
        try walkEraArray(snapshot) { first, block, count in
            guard era > 0 else { return }
            block.bytes.withUnsafeBytes { raw in
                for entry in 0..<count where raw.loadUnaligned(
                    fromByteOffset: arrayValuesOffset + entry * 4, as: UInt32.self).littleEndian >= era {
                    let index = first + UInt64(entry)
                    bitmap[Int(index / 64)] |= 1 << (index % 64)
                }
            }
        }
        try walkWritesets(snapshot) { (archived, writeset) throws(EraMetadataError) in
            guard archived >= era else { return }
            // Bits past the device's blocks (a writeset from before a shrink) are left out.
            let bits = min(UInt64(writeset.bitCount), blocks)
            try device.walkArray(root: writeset.root, tree: .writesetBitsetTree, blocks: .writesetBitsetBlock,
                                 valueSize: 8, length: (UInt64(writeset.bitCount) + 63) / 64) { first, block, count in
                block.bytes.withUnsafeBytes { raw in
                    for entry in 0..<count {
                        let index = first + UInt64(entry)
                        guard index * 64 < bits else { return }
                        var word = raw.loadUnaligned(fromByteOffset: arrayValuesOffset + entry * 8, as: UInt64.self).littleEndian
                        let valid = bits - index * 64
                        if valid < 64 { word &= (1 << valid) - 1 }
                        bitmap[Int(index)] |= word
                    }
                }
            }
        }
        return ChangedRanges(bitmap: bitmap, limit: blocks)
    }

    /// What the held snapshot holds: its archived eras and how far digestion has come.
    public func inventory() throws(EraMetadataError) -> EraInventory {
        let snapshot = try snapshotSuperblock()
        var eras: [UInt32] = []
        try walkWritesets(snapshot) { era, _ in eras.append(era) }
        var digested: UInt64 = 0
        var highest: UInt32 = 0
        try walkEraArray(snapshot) { _, block, count in
            block.bytes.withUnsafeBytes { raw in
                for entry in 0..<count {
                    let value = raw.loadUnaligned(fromByteOffset: arrayValuesOffset + entry * 4, as: UInt32.self).littleEndian
                    if value != 0 { digested += 1 }
                    highest = max(highest, value)
                }
            }
        }
        return EraInventory(snapshot: snapshot, archivedEras: eras, digestedBlocks: digested, highestDigestedEra: highest)
    }

    private func walkEraArray(_ snapshot: EraSuperblock,
                              _ visit: (UInt64, MetadataBlock, Int) throws(EraMetadataError) -> Void)
    throws(EraMetadataError) {
        try device.walkArray(root: snapshot.eraArrayRoot, tree: .eraArrayTree, blocks: .eraArrayBlock,
                             valueSize: 4, length: snapshot.blockCount, visit)
    }

    /// The writeset tree's entries: era (the key, which must fit 32 bits) to
    /// `struct writeset_disk { le32 nr_bits; le64 root; }` (packed, 12 bytes).
    private func walkWritesets(_ snapshot: EraSuperblock,
                               _ visit: (UInt32, EraSuperblock.Writeset) throws(EraMetadataError) -> Void)
    throws(EraMetadataError) {
        try device.walkBTree(root: snapshot.writesetTreeRoot, .writesetTree, valueSize: 12) {
            (key, leaf, offset) throws(EraMetadataError) in
            guard let era = UInt32(exactly: key) else {
                throw EraMetadataError(path: path, reason: .malformed(.writesetTree, block: leaf.location,
                                                                      "era \(key) does not fit 32 bits"))
            }
            try visit(era, EraSuperblock.Writeset(bitCount: leaf.u32(offset), root: leaf.u64(offset + 4)))
        }
    }
}
