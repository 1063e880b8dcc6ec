import BlockIO
import DeviceMapper
import Foundation

/// dm-era through the library, checked against thin-provisioning-tools' era_invalidate.
enum EraScenarios {
    static let all: [Scenario] = [
        Scenario("era: era_invalidate reports exactly the blocks written, era by era", eraMatchesInvalidate),
    ]

    static let blockSize = Sectors(128)

    /// Blocks that `era_invalidate --metadata-snapshot --written-since ERA` reports.
    static func invalidated(_ lab: Lab, metadata: String, since era: UInt32) throws -> Set<UInt64> {
        try invalidatedBlocks(xml: try lab.sh("era_invalidate", "--metadata-snapshot", "--written-since", "\(era)", metadata))
    }

    /// The blocks of `era_invalidate`'s XML: it writes `<block block="7"/>` and
    /// `<range begin="2" end = "4"/>` (end-exclusive, with spaces around the second `=`).
    static func invalidatedBlocks(xml: String) throws -> Set<UInt64> {
        var blocks = Set<UInt64>()
        for line in xml.split(separator: "\n") {
            var attributes: [Substring: UInt64] = [:]
            for match in line.matches(of: #/(\w+)\s*=\s*"(\d+)"/#) {
                attributes[match.output.1] = UInt64(match.output.2)
            }
            if line.contains("<range"), let begin = attributes["begin"], let end = attributes["end"] {
                blocks.formUnion(begin..<end)
            } else if line.contains("<block "), let block = attributes["block"] {
                blocks.insert(block)
            } else if line.contains("<range") || line.contains("<block ") {
                throw Failure(description: "unexpected era_invalidate line: \(line)")
            }
        }
        return blocks
    }

    static func currentEra(_ lab: Lab, _ name: DMName) throws -> EraStatus {
        guard case .era(let status) = try lab.dm.status(name).first?.status else {
            throw Failure(description: "era status: \(try lab.dmsetupStatus(name))")
        }
        return status
    }

    static func eraMatchesInvalidate(_ lab: Lab) throws {
        let data = try lab.loopDevice("data", size: .mebibytes(32))
        let metadata = try lab.loopDevice("meta", size: .mebibytes(4))
        let (name, uuid) = try lab.name("era")
        lab.track(name)
        try lab.dm.create(name, uuid: uuid, table: try Table(
            length: data.facts.sectors,
            .era(Era(metadata: .path(metadata.path), origin: .path(data.path), blockSize: blockSize))))
        try expectEqual(try lab.dmsetupTable(name),
                        "0 \(data.facts.sectors.rawValue) era \(metadata.facts.number) \(data.facts.number) \(blockSize.rawValue)",
                        "era table")
        try lab.capture(name, as: "era-fresh")
        let block = blockSize.bytes.rawValue
        let lastBlock = data.facts.size.rawValue / block - 1

        // Era 1: small, whole-block, straddling and last-block writes.
        let first = try currentEra(lab, name)
        try lab.writeRandom(name.devicePath, offset: .zero, length: .kibibytes(4))
        try lab.writeRandom(name.devicePath, offset: Bytes(3 * block + 8192), length: .kibibytes(4))
        try lab.writeRandom(name.devicePath, offset: Bytes(17 * block), length: Bytes(block))
        try lab.writeRandom(name.devicePath, offset: Bytes(100 * block - 4096), length: .kibibytes(8))
        try lab.writeRandom(name.devicePath, offset: Bytes(lastBlock * block), length: .kibibytes(4))
        let written1: Set<UInt64> = [0, 3, 17, 99, 100, lastBlock]

        try lab.dm.message(name, era: .takeMetadataSnapshot)
        let held = try currentEra(lab, name)
        try expect(held.heldMetadataRoot != nil, "no metadata snapshot held: \(held)")
        try expect(held.currentEra > first.currentEra, "take_metadata_snap did not start a new era: \(first) -> \(held)")
        try lab.capture(name, as: "era-held")
        try expectEqual(try invalidated(lab, metadata: metadata.path, since: first.currentEra), written1,
                        "era_invalidate since era \(first.currentEra)")
        try lab.dm.message(name, era: .dropMetadataSnapshot)
        try expectEqual(try currentEra(lab, name).heldMetadataRoot, nil, "held root after drop")

        // A checkpoint starts a new era; the next writes belong to it alone.
        try lab.dm.message(name, era: .checkpoint)
        let second = try currentEra(lab, name)
        try expect(second.currentEra > held.currentEra, "checkpoint did not advance the era: \(held) -> \(second)")
        try lab.writeRandom(name.devicePath, offset: Bytes(5 * block), length: Bytes(3 * block))
        try lab.writeRandom(name.devicePath, offset: Bytes(3 * block), length: .kibibytes(4))
        let written2: Set<UInt64> = [3, 5, 6, 7]

        try lab.dm.message(name, era: .takeMetadataSnapshot)
        try expectEqual(try invalidated(lab, metadata: metadata.path, since: second.currentEra), written2,
                        "era_invalidate since era \(second.currentEra)")
        try expectEqual(try invalidated(lab, metadata: metadata.path, since: first.currentEra), written1.union(written2),
                        "era_invalidate since era \(first.currentEra)")
        try lab.dm.message(name, era: .dropMetadataSnapshot)

        // An unknown message is refused with the kernel's reason in the error.
        let error = try expectThrows("unknown era message") { try lab.dm.message(name, "bogus") }
        try expect("\(error)".contains("message"), "error does not name the message task: \(error)")
    }
}
