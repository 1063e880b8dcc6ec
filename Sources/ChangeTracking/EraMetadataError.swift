import SystemPackage
import BlockIO

/// The structures of dm-era's metadata, named in errors so that a report says which part is
/// damaged.
public enum EraStructure: String, Hashable, Sendable, CustomStringConvertible {
    case superblock = "superblock"
    case snapshotSuperblock = "metadata snapshot's superblock"
    case writesetTree = "writeset tree node"
    case eraArrayTree = "era array btree node"
    case eraArrayBlock = "era array block"
    case writesetBitsetTree = "writeset bitset btree node"
    case writesetBitsetBlock = "writeset bitset block"

    public var description: String { rawValue }
}

/// Why dm-era metadata could not be read: the device could not be opened or read, or what it
/// holds is not the metadata this reader understands (damaged, foreign, or of a newer format).
/// The description names the path, the block and what was found there.
public struct EraMetadataError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Reason: Hashable, Sendable {
        /// `open(2)` failed.
        case open(Errno)
        /// `lseek(2)` to find the size failed.
        case size(Errno)
        /// The device or file is smaller than one 4 KiB metadata block.
        case tooSmall(bytes: UInt64)
        /// `pread(2)` of a block failed.
        case read(block: UInt64, Errno)
        /// `pread(2)` of a block returned fewer bytes than a block (the file ends inside it).
        case shortRead(block: UInt64, bytes: Int)
        /// A structure refers to a block past the end of the metadata device.
        case outOfRange(EraStructure, block: UInt64, metadataBlocks: UInt64)
        /// The superblock's magic number is not dm-era's (`SUPERBLOCK_MAGIC`).
        case badMagic(block: UInt64, found: UInt64)
        /// The block's stored crc32c does not match its content.
        case checksumMismatch(EraStructure, block: UInt64, stored: UInt32, computed: UInt32)
        /// The block records that it was written for another location (`blocknr`).
        case wrongLocation(EraStructure, block: UInt64, recorded: UInt64)
        /// The superblock's format version is not one this reader knows.
        case unsupportedVersion(UInt32)
        /// The superblock declares metadata blocks of another size than 4 KiB.
        case unsupportedMetadataBlockSize(sectors: UInt32)
        /// A tree reaches the same block twice: a loop, or a node shared where none may be.
        case loop(EraStructure, block: UInt64)
        /// A field of a block holds a value the format does not allow.
        case malformed(EraStructure, block: UInt64, String)
        /// The superblock names no held metadata snapshot.
        case noMetadataSnapshot
        /// The metadata describes other data blocks than the device it is supposed to track.
        case geometryMismatch(expected: EraGeometry, found: EraGeometry)
    }

    /// The metadata device or file.
    public var path: FilePath
    public var reason: Reason

    public init(path: FilePath, reason: Reason) {
        self.path = path
        self.reason = reason
    }

    /// The metadata block the error is about, when it is about one.
    public var block: UInt64? {
        switch reason {
        case .read(let block, _), .shortRead(let block, _), .outOfRange(_, let block, _),
             .badMagic(let block, _), .checksumMismatch(_, let block, _, _), .wrongLocation(_, let block, _),
             .loop(_, let block), .malformed(_, let block, _):
            return block
        case .open, .size, .tooSmall, .unsupportedVersion, .unsupportedMetadataBlockSize, .noMetadataSnapshot,
             .geometryMismatch:
            return nil
        }
    }

    /// The structure the error is about, when it is about one.
    public var structure: EraStructure? {
        switch reason {
        case .outOfRange(let structure, _, _), .checksumMismatch(let structure, _, _, _),
             .wrongLocation(let structure, _, _), .loop(let structure, _), .malformed(let structure, _, _):
            return structure
        case .badMagic, .unsupportedVersion, .unsupportedMetadataBlockSize, .geometryMismatch:
            return .superblock
        case .open, .size, .tooSmall, .read, .shortRead, .noMetadataSnapshot:
            return nil
        }
    }

    public var description: String {
        let damaged = "the metadata is damaged or not dm-era's (era_check tells more)"
        let what: String
        switch reason {
        case .open(let errno):
            what = "cannot open: \(errno) (check the path and that this process may read it)"
        case .size(let errno):
            what = "cannot find its size: \(errno)"
        case .tooSmall(let bytes):
            what = "\(bytes) bytes is smaller than one 4096-byte metadata block; this is not dm-era metadata"
        case .read(let block, let errno):
            what = "cannot read block \(block): \(errno)"
        case .shortRead(let block, let bytes):
            what = "block \(block) ends after \(bytes) of 4096 bytes; the device or file is truncated"
        case .outOfRange(let structure, let block, let blocks):
            what = "a \(structure) at block \(block) lies past the end of the metadata (\(blocks) blocks); \(damaged)"
        case .badMagic(let block, let found):
            what = "bad magic \(found) in the superblock at block \(block) (dm-era writes \(EraSuperblock.magic)); "
                + "this is not dm-era metadata, or it was never formatted by an era target"
        case .checksumMismatch(let structure, let block, let stored, let computed):
            what = "checksum mismatch in the \(structure) at block \(block) (stored \(hex(stored)), computed \(hex(computed))); \(damaged)"
        case .wrongLocation(let structure, let block, let recorded):
            what = "the \(structure) at block \(block) says it belongs at block \(recorded); \(damaged)"
        case .unsupportedVersion(let version):
            what = "unsupported metadata version \(version) (this reader knows version 1)"
        case .unsupportedMetadataBlockSize(let sectors):
            what = "unsupported metadata block size of \(sectors) sectors (dm-era writes 8, i.e. 4096 bytes)"
        case .loop(let structure, let block):
            what = "the \(structure) at block \(block) is reached twice (a loop in the tree); \(damaged)"
        case .malformed(let structure, let block, let detail):
            what = "malformed \(structure) at block \(block): \(detail); \(damaged)"
        case .noMetadataSnapshot:
            what = "no metadata snapshot is held; send `take_metadata_snap` to the era device "
                + "(dmsetup message NAME 0 take_metadata_snap) before reading changes, and `drop_metadata_snap` after"
        case .geometryMismatch(let expected, let found):
            what = "it tracks \(found), the device has \(expected); it is not this device's metadata, or it was damaged"
        }
        return "era metadata \(path): \(what)"
    }
}

/// The data blocks an era device tracks: their size and how many cover the device.
public struct EraGeometry: Hashable, Sendable, CustomStringConvertible {
    public var blockSize: Sectors
    public var blockCount: UInt64

    public init(blockSize: Sectors, blockCount: UInt64) {
        self.blockSize = blockSize
        self.blockCount = blockCount
    }

    /// The geometry dm-era gives a device of `deviceBytes`: the last block may be short.
    public init(blockSize: Sectors, deviceBytes: UInt64) {
        self.init(blockSize: blockSize, blockCount: deviceBytes.dividedRoundingUp(by: blockSize.bytes.rawValue))
    }

    public var description: String { "\(blockCount) blocks of \(blockSize.rawValue) sectors" }
}

private func hex(_ value: UInt32) -> String {
    let digits = String(value, radix: 16)
    return "0x" + String(repeating: "0", count: max(0, 8 - digits.count)) + digits
}
