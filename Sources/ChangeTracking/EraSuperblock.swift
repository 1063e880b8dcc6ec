import BlockIO
import SystemPackage

/// dm-era's superblock (`struct superblock_disk` in dm-era-target.c), at block 0 of the metadata
/// device, and its copy in the held metadata snapshot. Every field is little-endian, the struct
/// is packed:
///
/// ```
///   0 csum u32         4 flags u32        8 blocknr u64      16 uuid [16]
///  32 magic u64       40 version u32     44 metadata_space_map_root [128]
/// 172 data_block_size u32 (sectors)     176 metadata_block_size u32 (sectors)
/// 180 nr_blocks u32  184 current_era u32 188 current_writeset {nr_bits u32, root u64}
/// 200 writeset_tree_root u64            208 era_array_root u64    216 metadata_snap u64
/// ```
public struct EraSuperblock: Sendable, Equatable {
    /// `SUPERBLOCK_MAGIC` in dm-era-target.c.
    public static let magic: UInt64 = 2_126_579_579
    /// `MIN_ERA_VERSION`...`MAX_ERA_VERSION`.
    public static let supportedVersions: ClosedRange<UInt32> = 1...1

    /// A writeset: a dm-bitset (a dm-array of le64 words) with one bit per data block, set when
    /// the block was written in the writeset's era.
    public struct Writeset: Sendable, Equatable {
        public var bitCount: UInt32
        /// The root of the bitset's array btree.
        public var root: UInt64

        public init(bitCount: UInt32, root: UInt64) {
            self.bitCount = bitCount
            self.root = root
        }
    }

    /// The block this superblock was read from: 0 for the live one, the snapshot's block for
    /// the held copy.
    public var location: UInt64
    public var flags: UInt32
    public var version: UInt32
    /// The era that writes go to now (in a snapshot: the era that began when it was taken).
    public var currentEra: UInt32
    /// The era target's data block size, the unit of change tracking.
    public var blockSize: Sectors
    /// The number of data blocks tracked: the era device's length divided by `blockSize`,
    /// rounded up.
    public var blockCount: UInt64
    /// The writeset of the current era; nil after it was archived (its root is 0 then). Not
    /// valid in a snapshot's copy, which the kernel does not keep it alive for.
    public var currentWriteset: Writeset?
    /// The btree from era to the archived writesets not yet digested into the era array.
    public var writesetTreeRoot: UInt64
    /// The dm-array of le32 eras, one per data block: the era it was last written in, as far as
    /// archived writesets have been digested into it.
    public var eraArrayRoot: UInt64
    /// The block of the held metadata snapshot (its superblock copy), or nil when none is held.
    public var metadataSnapshot: UInt64?

    public init(location: UInt64, flags: UInt32 = 0, version: UInt32 = 1, currentEra: UInt32, blockSize: Sectors,
                blockCount: UInt64, currentWriteset: Writeset?, writesetTreeRoot: UInt64, eraArrayRoot: UInt64,
                metadataSnapshot: UInt64?) {
        self.location = location
        self.flags = flags
        self.version = version
        self.currentEra = currentEra
        self.blockSize = blockSize
        self.blockCount = blockCount
        self.currentWriteset = currentWriteset
        self.writesetTreeRoot = writesetTreeRoot
        self.eraArrayRoot = eraArrayRoot
        self.metadataSnapshot = metadataSnapshot
    }

    /// Decodes and checks a superblock block in the order the kernel's `sb_check` does, except
    /// that the magic comes first: a block that is not era metadata at all is named as such
    /// rather than as a checksum failure.
    init(_ block: MetadataBlock, path: FilePath, structure: EraStructure) throws(EraMetadataError) {
        func fail(_ reason: EraMetadataError.Reason) -> EraMetadataError {
            EraMetadataError(path: path, reason: reason)
        }
        let magic = block.u64(32)
        guard magic == Self.magic else { throw fail(.badMagic(block: block.location, found: magic)) }
        let computed = block.computedChecksum(.superblock)
        guard computed == block.storedChecksum else {
            throw fail(.checksumMismatch(structure, block: block.location, stored: block.storedChecksum, computed: computed))
        }
        let recorded = block.u64(8)
        guard recorded == block.location else {
            throw fail(.wrongLocation(structure, block: block.location, recorded: recorded))
        }
        let version = block.u32(40)
        guard Self.supportedVersions.contains(version) else { throw fail(.unsupportedVersion(version)) }
        let metadataSectors = block.u32(176)
        guard UInt64(metadataSectors) * Sectors.size == UInt64(metadataBlockSize) else {
            throw fail(.unsupportedMetadataBlockSize(sectors: metadataSectors))
        }
        let dataBlockSize = block.u32(172)
        // The target refuses block sizes that are zero or not a multiple of 8 sectors
        // (`valid_block_size`), so no metadata it wrote holds one.
        guard dataBlockSize > 0, dataBlockSize % 8 == 0 else {
            throw fail(.malformed(structure, block: block.location, "data block size of \(dataBlockSize) sectors"))
        }
        let writesetRoot = block.u64(192)
        let snapshot = block.u64(216)
        self.init(location: block.location, flags: block.u32(4), version: version, currentEra: block.u32(184),
                  blockSize: Sectors(UInt64(dataBlockSize)), blockCount: UInt64(block.u32(180)),
                  currentWriteset: writesetRoot == 0 ? nil : Writeset(bitCount: block.u32(188), root: writesetRoot),
                  writesetTreeRoot: block.u64(200), eraArrayRoot: block.u64(208),
                  metadataSnapshot: snapshot == 0 ? nil : snapshot)
    }
}
