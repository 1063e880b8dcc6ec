import Foundation
import SystemPackage
import Testing

/// The fixtures captured in the VM (Fixtures/README.md says how).
let fixturesDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")

/// A metadata image kept as its non-zero 4 KiB blocks; blocks can be changed before it is
/// written out as a sparse file for the reader.
struct MetadataImage {
    static let blockSize = 4096
    var blockCount: UInt64
    var blocks: [UInt64: [UInt8]]

    init(blockCount: UInt64, blocks: [UInt64: [UInt8]]) {
        self.blockCount = blockCount
        self.blocks = blocks
    }

    /// Reads Fixtures/NAME.metadata: "SSERAIMG", the image's block count (le64), the number of
    /// stored blocks (le64), their block numbers (le64 each), then each block as runs of
    /// (zero bytes: le16, literal bytes: le16, the literal bytes) adding up to 4096.
    init(fixture name: String) throws {
        let data = [UInt8](try Data(contentsOf: fixturesDirectory.appendingPathComponent(name + ".metadata")))
        func fail(_ why: String) -> FixtureError { FixtureError(description: "\(name).metadata: \(why)") }
        guard data.count >= 24, String(decoding: data[0..<8], as: UTF8.self) == "SSERAIMG" else {
            throw fail("not a compact metadata image")
        }
        func integer(_ offset: Int, _ size: Int) throws -> UInt64 {
            guard offset + size <= data.count else { throw fail("ends early") }
            return data[offset..<offset + size].reversed().reduce(0) { $0 << 8 | UInt64($1) }
        }
        blockCount = try integer(8, 8)
        let stored = Int(try integer(16, 8))
        var position = 24 + stored * 8
        blocks = [:]
        for index in 0..<stored {
            var bytes: [UInt8] = []
            while bytes.count < Self.blockSize {
                let zeros = Int(try integer(position, 2)), literal = Int(try integer(position + 2, 2))
                position += 4
                guard zeros + literal > 0, position + literal <= data.count,
                      bytes.count + zeros + literal <= Self.blockSize else {
                    throw fail("block \(index) runs past its end")
                }
                bytes += [UInt8](repeating: 0, count: zeros) + data[position..<position + literal]
                position += literal
            }
            blocks[try integer(24 + index * 8, 8)] = bytes
        }
        guard position == data.count else { throw fail("\(data.count - position) bytes after the last block") }
    }

    func block(_ number: UInt64) -> [UInt8] {
        blocks[number] ?? [UInt8](repeating: 0, count: Self.blockSize)
    }

    func u32(_ block: UInt64, _ offset: Int) -> UInt32 {
        self.block(block)[offset..<offset + 4].reversed().reduce(0) { $0 << 8 | UInt32($1) }
    }

    func u64(_ block: UInt64, _ offset: Int) -> UInt64 {
        self.block(block)[offset..<offset + 8].reversed().reduce(0) { $0 << 8 | UInt64($1) }
    }

    mutating func set(_ block: UInt64, _ offset: Int, u32 value: UInt32) {
        var bytes = self.block(block)
        for index in 0..<4 { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index)) }
        blocks[block] = bytes
    }

    mutating func set(_ block: UInt64, _ offset: Int, u64 value: UInt64) {
        var bytes = self.block(block)
        for index in 0..<8 { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index)) }
        blocks[block] = bytes
    }

    mutating func flip(_ block: UInt64, _ offset: Int) {
        var bytes = self.block(block)
        bytes[offset] ^= 0x5A
        blocks[block] = bytes
    }

    /// Stores a fresh checksum in `block` as the kernel's `dm_bm_checksum` would, computed with
    /// this file's own CRC-32C (not the reader's): `crc32c(~0, bytes 4..<4096) ^ xor`.
    mutating func reseal(_ block: UInt64, xor: UInt32) {
        let bytes = self.block(block)
        set(block, 0, u32: ReferenceCRC32C.raw(bytes[4...]) ^ xor)
    }

    /// Writes the image as a sparse file in a directory of its own and returns its path.
    func write() throws -> FilePath {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("snapstack-changetracking-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let url = directory.appendingPathComponent("metadata.img")
        guard FileManager.default.createFile(atPath: url.path, contents: nil) else {
            throw FixtureError(description: "cannot create \(url.path)")
        }
        let handle = try FileHandle(forWritingTo: url)
        defer { try? handle.close() }
        try handle.truncate(atOffset: blockCount * UInt64(Self.blockSize))
        for (number, bytes) in blocks.sorted(by: { $0.key < $1.key }) {
            try handle.seek(toOffset: number * UInt64(Self.blockSize))
            try handle.write(contentsOf: Data(bytes))
        }
        return FilePath(url.path)
    }

    static func remove(_ path: FilePath) {
        try? FileManager.default.removeItem(atPath: path.removingLastComponent().string)
    }
}

/// The checksum xor constants, from the kernel sources rather than from the reader.
enum KernelXor {
    static let superblock: UInt32 = 146_538_381  // dm-era-target.c SUPERBLOCK_CSUM_XOR
    static let btreeNode: UInt32 = 121_107  // dm-btree.c BTREE_CSUM_XOR
    static let arrayBlock: UInt32 = 595_846_735  // dm-array.c CSUM_XOR
}

/// Offsets in `struct superblock_disk` (dm-era-target.c).
enum SuperblockField {
    static let checksum = 0, blockNumber = 8, magic = 32, version = 40, blockCount = 180, currentEra = 184
    static let writesetTreeRoot = 200, eraArrayRoot = 208, metadataSnapshot = 216
}

/// A bit-at-a-time CRC-32C, independent of the reader's table-driven one.
enum ReferenceCRC32C {
    /// Without the final inversion, seeded with all ones: the kernel's `crc32c(~0, ...)`.
    static func raw(_ bytes: some Sequence<UInt8>) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes {
            crc ^= UInt32(byte)
            for _ in 0..<8 { crc = crc & 1 == 1 ? (crc >> 1) ^ 0x82F6_3B78 : crc >> 1 }
        }
        return crc
    }
}

/// `era_invalidate`'s XML: `<block block="7"/>` and `<range begin="2" end = "4"/>`
/// (end-exclusive, with spaces around the second `=` in 0.9.0), in order.
func invalidatedRanges(xml: String) throws -> [Range<UInt64>] {
    var ranges: [Range<UInt64>] = []
    for line in xml.split(separator: "\n") {
        var attributes: [Substring: UInt64] = [:]
        for match in line.matches(of: #/(\w+)\s*=\s*"(\d+)"/#) {
            attributes[match.output.1] = UInt64(match.output.2)
        }
        if line.contains("<range"), let begin = attributes["begin"], let end = attributes["end"] {
            ranges.append(begin..<end)
        } else if line.contains("<block "), let block = attributes["block"] {
            ranges.append(block..<block + 1)
        } else if line.contains("<range") || line.contains("<block ") {
            throw FixtureError(description: "unexpected era_invalidate line: \(line)")
        }
    }
    return ranges
}

/// The era status line captured with a fixture:
/// `START LENGTH era <metadata block size> <used>/<total> <current era> <held root | ->`.
struct CapturedEraStatus {
    var length: UInt64
    var currentEra: UInt32
    var heldRoot: UInt64?

    init(fixture name: String) throws {
        let line = try String(contentsOf: fixturesDirectory.appendingPathComponent(name + ".status"), encoding: .utf8)
        let fields = line.split(whereSeparator: \.isWhitespace)
        guard fields.count == 7, fields[2] == "era", let length = UInt64(fields[1]), let era = UInt32(fields[5]) else {
            throw FixtureError(description: "unexpected era status line: \(line)")
        }
        self.length = length
        currentEra = era
        heldRoot = fields[6] == "-" ? nil : UInt64(fields[6])
    }
}

/// The `era_invalidate` answers captured with a fixture: since-era to its XML.
func capturedAnswers(fixture name: String) throws -> [(since: UInt32, xml: String)] {
    let prefix = name + ".since-"
    return try FileManager.default.contentsOfDirectory(atPath: fixturesDirectory.path)
        .filter { $0.hasPrefix(prefix) && $0.hasSuffix(".xml") }
        .compactMap { file -> (UInt32, String)? in
            guard let since = UInt32(file.dropFirst(prefix.count).dropLast(4)) else { return nil }
            return (since, try String(contentsOf: fixturesDirectory.appendingPathComponent(file), encoding: .utf8))
        }
        .sorted { $0.0 < $1.0 }
}

struct FixtureError: Error, CustomStringConvertible {
    var description: String
}
