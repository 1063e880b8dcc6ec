// The checksum of persistent-data blocks: the kernel's `dm_bm_checksum(data, len, xor)` is
// `crc32c(~0, data, len) ^ xor` — CRC-32C (Castagnoli) seeded with all ones and *without* the
// final inversion, then xored with a constant that differs per kind of block, so that a block
// of one kind can never pass for another. The checksum covers the whole block after the
// stored checksum itself (bytes 4..<4096).

/// The xor constant of each kind of block that dm-era's metadata holds.
enum BlockKind: UInt32, Sendable {
    /// `SUPERBLOCK_CSUM_XOR` in dm-era-target.c (also the held metadata snapshot's copy).
    case superblock = 146538381
    /// `BTREE_CSUM_XOR` in persistent-data/dm-btree.c: every btree node, internal or leaf.
    case btreeNode = 121107
    /// `CSUM_XOR` in persistent-data/dm-array.c: the blocks that hold array entries
    /// (the era array's le32 eras, a writeset bitset's le64 words).
    case arrayBlock = 595846735
}

enum Checksum {
    /// Slicing-by-8 tables for the reflected Castagnoli polynomial 0x82F63B78: eight bytes per
    /// step instead of one, which matters because a large device's era array is megabytes of
    /// metadata.
    static let tables: [[UInt32]] = {
        var tables = [[UInt32]](repeating: [UInt32](repeating: 0, count: 256), count: 8)
        for byte in 0..<256 {
            var crc = UInt32(byte)
            for _ in 0..<8 { crc = (crc >> 1) ^ (crc & 1 == 0 ? 0 : 0x82F6_3B78) }
            tables[0][byte] = crc
        }
        for byte in 0..<256 {
            for slice in 1..<8 {
                let previous = tables[slice - 1][byte]
                tables[slice][byte] = (previous >> 8) ^ tables[0][Int(previous & 0xFF)]
            }
        }
        return tables
    }()

    /// CRC-32C over `bytes` continuing from `crc`, with neither an initial nor a final inversion
    /// (the caller chooses both, as the kernel's `crc32c(seed, ...)` lets its callers do).
    static func crc32c(_ crc: UInt32, _ bytes: UnsafeRawBufferPointer) -> UInt32 {
        var crc = crc
        var index = 0
        let count = bytes.count
        tables.withUnsafeBufferPointer { t in
            let t0 = t[0], t1 = t[1], t2 = t[2], t3 = t[3], t4 = t[4], t5 = t[5], t6 = t[6], t7 = t[7]
            while count - index >= 8 {
                let low = bytes.loadUnaligned(fromByteOffset: index, as: UInt32.self).littleEndian ^ crc
                let high = bytes.loadUnaligned(fromByteOffset: index + 4, as: UInt32.self).littleEndian
                crc = t7[Int(low & 0xFF)] ^ t6[Int((low >> 8) & 0xFF)]
                    ^ t5[Int((low >> 16) & 0xFF)] ^ t4[Int(low >> 24)]
                    ^ t3[Int(high & 0xFF)] ^ t2[Int((high >> 8) & 0xFF)]
                    ^ t1[Int((high >> 16) & 0xFF)] ^ t0[Int(high >> 24)]
                index += 8
            }
            while index < count {
                crc = (crc >> 8) ^ t0[Int((crc ^ UInt32(bytes[index])) & 0xFF)]
                index += 1
            }
        }
        return crc
    }

    /// `dm_bm_checksum` of a whole metadata block as `kind` would store it in its first four bytes.
    static func block(_ block: UnsafeRawBufferPointer, kind: BlockKind) -> UInt32 {
        crc32c(0xFFFF_FFFF, UnsafeRawBufferPointer(rebasing: block[4...])) ^ kind.rawValue
    }
}

/// Recomputes the stored checksum of every whole 4 KiB block of era metadata held in `bytes`,
/// guessing each block's kind as the reader will expect it: block 0 and the block the
/// superblock names as its metadata snapshot are superblocks; a block whose header flags say
/// internal or leaf (1 or 2, at byte 4) is a btree node; any other, an array block. For fuzzers
/// and tests, so that mutated metadata gets past its checksums to the checks behind them.
@_spi(Testing)
public func resealEraMetadata(_ bytes: inout [UInt8]) {
    let blockSize = 4096
    let blocks = bytes.count / blockSize
    guard blocks > 0 else { return }
    let snapshotBlock = bytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 216, as: UInt64.self)) }
    for index in 0..<blocks {
        let start = index * blockSize
        let flags = bytes.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: start + 4, as: UInt32.self)) }
        let kind: BlockKind = index == 0 || UInt64(index) == snapshotBlock ? .superblock
            : (flags == 1 || flags == 2) ? .btreeNode : .arrayBlock
        let sum = bytes.withUnsafeBytes { Checksum.block(UnsafeRawBufferPointer(rebasing: $0[start..<(start + blockSize)]), kind: kind) }
        bytes.withUnsafeMutableBytes { $0.storeBytes(of: sum.littleEndian, toByteOffset: start, as: UInt32.self) }
    }
}
