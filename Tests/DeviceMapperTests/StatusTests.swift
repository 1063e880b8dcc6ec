import BlockIO
import DeviceMapper
import Testing

@Suite("SnapshotStatus")
struct SnapshotStatusTests {
    @Test("an active snapshot's usage")
    func active() throws {
        let status = try SnapshotStatus(parsing: "16/2097152 16")
        #expect(status == .active(allocated: Sectors(16), total: Sectors(2_097_152), metadata: Sectors(16)))
        let percent = try #require(status.usedPercent)
        #expect(abs(percent - 0.000762939453125) < 1e-12)
        #expect(status.isMergeComplete)
    }

    @Test("usedPercent is allocated over total", arguments: [
        ("16/2097152 16", 0.000762939453125),
        ("1048576/2097152 2048", 50),
        ("2097152/2097152 4096", 100),
        ("0/1024 0", 0),
    ] as [(String, Double)])
    func usedPercent(text: String, expected: Double) throws {
        let percent = try #require(try SnapshotStatus(parsing: text).usedPercent)
        #expect(abs(percent - expected) < 1e-9)
    }

    @Test("a merge is complete only when just the metadata is left")
    func mergeComplete() throws {
        #expect(try SnapshotStatus(parsing: "16/2097152 16").isMergeComplete)
        #expect(try !SnapshotStatus(parsing: "48/2097152 16").isMergeComplete)
        #expect(try SnapshotStatus(parsing: "48/2097152 16").usedPercent != nil)
    }

    @Test("the kernel's words for a snapshot that is not active", arguments: [
        ("Invalid", SnapshotStatus.invalid),
        ("Overflow", .overflow),
        ("Merge failed", .mergeFailed),
        ("Unknown", .unknown),
        ("Invalid\n", .invalid),
        (" Merge failed ", .mergeFailed),
    ])
    func states(text: String, expected: SnapshotStatus) throws {
        let status = try SnapshotStatus(parsing: text)
        #expect(status == expected)
        #expect(status.usedPercent == nil)
        #expect(!status.isMergeComplete)
    }

    @Test("a total of 0 gives no percentage")
    func zeroTotal() throws {
        #expect(try SnapshotStatus(parsing: "0/0 0").usedPercent == nil)
    }

    @Test("malformed status text is refused", arguments: [
        "", "16/ 16", "a/b c", "32/16 8", "16/32 24", "16/32", "16 32 16", "16/32/64 16", "16/32 16 1",
        "invalid", "Merge", "-16/32 0", "16/32 x",
    ])
    func malformed(text: String) throws {
        let error = try #require(throws: TableError.self) { try SnapshotStatus(parsing: text) }
        #expect(error.isMalformed, "got \(error)")
    }
}

@Suite("EraStatus")
struct EraStatusTests {
    @Test("no held metadata root")
    func noHeldRoot() throws {
        let status = try EraStatus(parsing: "8 96/4096 1 -")
        #expect(status.metadataBlockSize == Sectors(8))
        #expect(status.usedMetadataBlocks == 96)
        #expect(status.totalMetadataBlocks == 4096)
        #expect(status.currentEra == 1)
        #expect(status.heldMetadataRoot == nil)
        #expect(status == EraStatus(metadataBlockSize: Sectors(8), usedMetadataBlocks: 96, totalMetadataBlocks: 4096,
                                    currentEra: 1, heldMetadataRoot: nil))
    }

    @Test("a held metadata root")
    func heldRoot() throws {
        let status = try EraStatus(parsing: "8 100/4096 5 17")
        #expect(status.heldMetadataRoot == 17)
        #expect(status.currentEra == 5)
        #expect(status.usedMetadataBlocks == 100)
    }

    @Test("the largest era fits")
    func largestEra() throws {
        #expect(try EraStatus(parsing: "8 96/4096 4294967295 -").currentEra == UInt32.max)
    }

    @Test("malformed status text is refused", arguments: [
        "8 96/4096 1", "8 97/96 1 -", "8 96/4096 x -", "8 96/4096 1 y", "", "8 96 1 -", "x 96/4096 1 -",
        "8 96/4096 1 - extra", "8 96/4096 4294967296 -", "8 96/4096 -1 -",
    ])
    func malformed(text: String) throws {
        let error = try #require(throws: TableError.self) { try EraStatus(parsing: text) }
        #expect(error.isMalformed, "got \(error)")
    }
}

@Suite("TargetStatus and StatusLine")
struct TargetStatusTests {
    @Test("targets without a status report nothing", arguments: ["linear", "snapshot-origin", "zero", "error"])
    func empty(type: String) throws {
        #expect(try TargetStatus(type: type, text: "") == .empty(type: type))
        #expect(try TargetStatus(type: type, text: " ") == .empty(type: type))
    }

    @Test("text where none is expected is refused", arguments: ["linear", "snapshot-origin", "zero", "error"])
    func unexpectedText(type: String) throws {
        let error = try #require(throws: TableError.self) { try TargetStatus(type: type, text: "junk") }
        #expect(error.isMalformed, "got \(error)")
    }

    @Test("snapshot, snapshot-merge and era statuses are parsed by type")
    func typed() throws {
        let usage = SnapshotStatus.active(allocated: Sectors(16), total: Sectors(2_097_152), metadata: Sectors(16))
        #expect(try TargetStatus(type: "snapshot", text: "16/2097152 16") == .snapshot(usage))
        #expect(try TargetStatus(type: "snapshot-merge", text: "16/2097152 16") == .snapshotMerge(usage))
        #expect(try TargetStatus(type: "snapshot", text: "Invalid") == .snapshot(.invalid))
        #expect(try TargetStatus(type: "era", text: "8 96/4096 1 -") == .era(
            EraStatus(metadataBlockSize: Sectors(8), usedMetadataBlocks: 96, totalMetadataBlocks: 4096,
                      currentEra: 1, heldMetadataRoot: nil)))
        #expect(throws: TableError.self) { try TargetStatus(type: "snapshot", text: "junk") }
        #expect(throws: TableError.self) { try TargetStatus(type: "era", text: "junk") }
    }

    @Test("an era whose metadata failed reports Error (as dm-era 1.0 prints it, measured with its metadata on dm-flakey error_writes)")
    func failedEra() throws {
        #expect(try TargetStatus(type: "era", text: "Error") == .failed(type: "era"))
        #expect(try StatusLine(parsing: "0 131072 era Error").status == .failed(type: "era"))
        #expect(throws: TableError.self) { try TargetStatus(type: "era", text: "Error 1") }
        #expect(throws: TableError.self) { try TargetStatus(type: "snapshot", text: "Error") }
    }

    @Test("an unknown type is kept as unmodelled")
    func unmodelled() throws {
        #expect(try TargetStatus(type: "thin", text: "0 -") == .unmodelled(type: "thin", text: "0 -"))
        #expect(try TargetStatus(type: "thin", text: "") == .unmodelled(type: "thin", text: ""))
    }

    @Test("a dmsetup status line")
    func statusLine() throws {
        let line = try StatusLine(parsing: "0 2097152 snapshot 16/2097152 16")
        #expect(line.start == .zero)
        #expect(line.length == Sectors(2_097_152))
        #expect(line.status == .snapshot(.active(allocated: Sectors(16), total: Sectors(2_097_152),
                                                 metadata: Sectors(16))))
    }

    @Test("status lines of other kinds", arguments: [
        ("2048 4096 linear", StatusLine(start: Sectors(2048), length: Sectors(4096), status: .empty(type: "linear"))),
        ("0 100 snapshot Merge failed", StatusLine(start: .zero, length: Sectors(100), status: .snapshot(.mergeFailed))),
        ("0 100 snapshot-merge 16/2097152 16",
         StatusLine(start: .zero, length: Sectors(100), status: .snapshotMerge(
            .active(allocated: Sectors(16), total: Sectors(2_097_152), metadata: Sectors(16))))),
        ("0 100 era 8 100/4096 5 17",
         StatusLine(start: .zero, length: Sectors(100), status: .era(
            EraStatus(metadataBlockSize: Sectors(8), usedMetadataBlocks: 100, totalMetadataBlocks: 4096,
                      currentEra: 5, heldMetadataRoot: 17)))),
        ("0 100 thin 0 -", StatusLine(start: .zero, length: Sectors(100), status: .unmodelled(type: "thin", text: "0 -"))),
    ])
    func otherLines(text: String, expected: StatusLine) throws {
        #expect(try StatusLine(parsing: text) == expected)
    }

    @Test("malformed status lines are refused", arguments: [
        "", "0 100", "a 100 linear", "0 b linear", "0 100 linear junk", "0 100 snapshot junk", "0 100 era 8",
    ])
    func malformedLine(text: String) throws {
        let error = try #require(throws: TableError.self) { try StatusLine(parsing: text) }
        #expect(error.isMalformed, "got \(error)")
    }
}
