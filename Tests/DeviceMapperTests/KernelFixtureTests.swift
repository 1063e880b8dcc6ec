import BlockIO
import DeviceMapper
import Foundation
import Testing

/// The parsers on strings the real kernel printed (captured by the VM suite, see Fixtures/README.md).
@Suite struct KernelFixtureTests {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("Fixtures/kernel-6.1")

    static func read(_ name: String) throws -> String {
        try String(contentsOf: directory.appendingPathComponent(name), encoding: .utf8)
    }

    static func status(_ name: String) throws -> [StatusLine] {
        try read(name + ".status").split(separator: "\n").map { line throws(TableError) in try StatusLine(parsing: line) }
    }

    static let loop0 = DeviceReference.number(DeviceNumber(major: 7, minor: 0))
    static let loop1 = DeviceReference.number(DeviceNumber(major: 7, minor: 1))
    static let dm1 = DeviceReference.number(DeviceNumber(major: 254, minor: 1))

    @Test func everyCapturedTableParsesAndRendersBackByteForByte() throws {
        let files = try FileManager.default.contentsOfDirectory(atPath: Self.directory.path).filter { $0.hasSuffix(".table") }
        #expect(files.count >= 10)
        for file in files {
            let text = try Self.read(file)
            let table = try Table(parsing: text)
            #expect(table.description + "\n" == text, "\(file)")
            #expect(throws: Never.self) { try table.validate() }
        }
    }

    @Test func linear() throws {
        let table = try Table(parsing: Self.read("linear.table"))
        #expect(table == (try Table(length: Sectors(129024), .linear(Linear(device: Self.loop0, offset: Sectors(2048))))))
        #expect(try Self.status("linear") == [StatusLine(start: .zero, length: Sectors(129024), status: .empty(type: "linear"))])
    }

    @Test func era() throws {
        #expect(try Table(parsing: Self.read("era-fresh.table")) == (try Table(
            length: Sectors(65536), .era(Era(metadata: Self.loop1, origin: Self.loop0, blockSize: Sectors(128))))))
        #expect(try Self.status("era-fresh").first?.status == .era(EraStatus(
            metadataBlockSize: Sectors(8), usedMetadataBlocks: 9, totalMetadataBlocks: 1024, currentEra: 1, heldMetadataRoot: nil)))
        #expect(try Self.status("era-held").first?.status == .era(EraStatus(
            metadataBlockSize: Sectors(8), usedMetadataBlocks: 16, totalMetadataBlocks: 1024, currentEra: 2, heldMetadataRoot: 44)))
    }

    @Test func snapshotOriginAndSnapshot() throws {
        #expect(try Table(parsing: Self.read("snapshot-origin.table")).lines.first?.target
                == .snapshotOrigin(SnapshotOrigin(origin: Self.dm1)))
        #expect(try Self.status("snapshot-origin").first?.status == .empty(type: "snapshot-origin"))
        #expect(try Table(parsing: Self.read("snapshot-fresh.table")).lines.first?.target
                == .snapshot(Snapshot(origin: Self.dm1, cow: Self.loop1, persistence: .persistent, chunkSize: Sectors(8))))
        let fresh = try #require(try Self.status("snapshot-fresh").first?.status)
        #expect(fresh == .snapshot(.active(allocated: Sectors(16), total: Sectors(32768), metadata: Sectors(16))))
        let used = try #require(try Self.status("snapshot-used").first?.status)
        #expect(used == .snapshot(.active(allocated: Sectors(8240), total: Sectors(32768), metadata: Sectors(48))))
        guard case .snapshot(let usage) = used else { Issue.record("not a snapshot"); return }
        #expect(abs(usage.usedPercent! - 25.146484375) < 1e-9)
        #expect(!usage.isMergeComplete)
    }

    @Test func snapshotFailureStates() throws {
        #expect(try Table(parsing: Self.read("snapshot-po.table")).lines.first?.target
                == .snapshot(Snapshot(origin: Self.dm1, cow: Self.loop1, persistence: .persistentReportingOverflow, chunkSize: Sectors(8))))
        #expect(try Self.status("snapshot-invalid").first?.status == .snapshot(.invalid))
        #expect(try Self.status("snapshot-overflow").first?.status == .snapshot(.overflow))
    }

    @Test func mergeFinished() throws {
        #expect(try Table(parsing: Self.read("snapshot-merge-done.table")).lines.first?.target
                == .snapshotMerge(SnapshotMerge(origin: Self.dm1, cow: Self.loop1, chunkSize: Sectors(8))))
        let status = try #require(try Self.status("snapshot-merge-done").first?.status)
        guard case .snapshotMerge(let merge) = status else { Issue.record("not a merge: \(status)"); return }
        #expect(merge.isMergeComplete)
    }

    @Test func twoLineTable() throws {
        let table = try Table(parsing: Self.read("error-zero.table"))
        #expect(table.lines.map(\.target) == [.error, .zero])
        #expect(table.size == Sectors(32768))
        #expect(try Self.status("error-zero").map(\.status) == [.empty(type: "error"), .empty(type: "zero")])
    }
}
