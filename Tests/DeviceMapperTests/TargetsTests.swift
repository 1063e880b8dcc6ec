import BlockIO
import DeviceMapper
import Testing

/// Device references of both kinds, in pairs (origin-like, COW/metadata-like).
private let referencePairs: [(DeviceReference, DeviceReference)] = [
    (.dev(7, 1), .dev(7, 2)),
    (.dev(259, 65_536), .dev(253, 12)),
    (.path("/dev/loop1"), .path("/dev/disk/by-id/wwn-0x5000c500a1b2c3d4-part1")),
    (.path("/dev/mapper/snapstack-origin"), .dev(7, 2)),
]

private let featureSets: [[SnapshotFeature]] = [
    [], [.discardZeroesCOW], [.discardZeroesCOW, .discardPassdownOrigin],
]

/// One of every target type, with every persistence and feature set, over both kinds of reference.
let everyTarget: [Target] = referencePairs.flatMap { a, b -> [Target] in
    var targets: [Target] = [
        .linear(Linear(device: a)),
        .linear(Linear(device: b, offset: Sectors(2048))),
        .linear(Linear(device: a, offset: Sectors(UInt64.max))),
        .striped(Striped(chunkSize: Sectors(128), stripes: [.init(device: a, offset: Sectors(2048)), .init(device: b, offset: .zero)])),
        .striped(Striped(chunkSize: Sectors(8), stripes: [.init(device: b, offset: Sectors(UInt64.max))])),
        .era(Era(metadata: b, origin: a, blockSize: Sectors(128))),
        .snapshotOrigin(SnapshotOrigin(origin: a)),
        .zero,
        .error,
    ]
    for persistence in SnapshotPersistence.allCases {
        for features in featureSets {
            targets.append(.snapshot(Snapshot(origin: a, cow: b, persistence: persistence,
                                              chunkSize: Sectors(8), features: features)))
        }
        targets.append(.snapshotMerge(SnapshotMerge(origin: a, cow: b, persistence: persistence,
                                                    chunkSize: Sectors(16))))
    }
    return targets
}

/// `T(parameters: t.parameters) == t`, with the mismatch shown when it fails.
private func expectRoundTrip<T: TargetParameters>(_ target: T, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let parsed = try T(parameters: target.parameters)
    #expect(parsed == target, "rendered as \"\(target.parameters)\"", sourceLocation: sourceLocation)
}

@Suite("Target rendering and parsing")
struct TargetRoundTripTests {
    @Test("every target type's parameters parse back to the same value", arguments: everyTarget)
    func parametersRoundTrip(target: Target) throws {
        switch target {
        case .linear(let t): try expectRoundTrip(t)
        case .striped(let t): try expectRoundTrip(t)
        case .era(let t): try expectRoundTrip(t)
        case .snapshotOrigin(let t): try expectRoundTrip(t)
        case .snapshot(let t): try expectRoundTrip(t)
        case .snapshotMerge(let t): try expectRoundTrip(t)
        case .zero: try expectRoundTrip(Zero())
        case .error: try expectRoundTrip(ErrorTarget())
        case .unmodelled: Issue.record("everyTarget holds only modelled targets")
        }
    }

    @Test("Target(type:parameters:) builds the same enum case back", arguments: everyTarget)
    func targetRoundTrip(target: Target) throws {
        let parsed = try Target(type: target.type, parameters: target.parameters)
        #expect(parsed == target)
        #expect(parsed.type == target.type)
    }

    @Test("rendered parameters are single-space separated with no stray spaces", arguments: everyTarget)
    func wellFormedText(target: Target) {
        let text = target.parameters
        #expect(!text.hasPrefix(" "))
        #expect(!text.hasSuffix(" "))
        #expect(!text.contains("  "))
        #expect(!text.contains("\n"))
    }

    @Test("a table line's description parses back to the same line", arguments: everyTarget)
    func tableLineRoundTrip(target: Target) throws {
        let line = TableLine(start: Sectors(2048), length: Sectors(4096), target: target)
        let parsed = try TableLine(parsing: line.description)
        #expect(parsed == line)
        #expect(parsed.description == line.description)
    }

    @Test("type names are the kernel's", arguments: [
        (Target.linear(Linear(device: .dev(7, 0))), "linear"),
        (.era(Era(metadata: .dev(7, 3), origin: .dev(7, 0), blockSize: Sectors(8))), "era"),
        (.snapshotOrigin(SnapshotOrigin(origin: .dev(7, 0))), "snapshot-origin"),
        (.snapshot(Snapshot(origin: .dev(7, 1), cow: .dev(7, 2), chunkSize: Sectors(8))), "snapshot"),
        (.snapshotMerge(SnapshotMerge(origin: .dev(7, 1), cow: .dev(7, 2), chunkSize: Sectors(8))), "snapshot-merge"),
        (.zero, "zero"),
        (.error, "error"),
        (.unmodelled(type: "thin", parameters: "253:3 1"), "thin"),
    ])
    func typeNames(target: Target, type: String) {
        #expect(target.type == type)
    }

    @Test("an unknown type is kept as unmodelled, parameters untouched")
    func unmodelled() throws {
        let target = try Target(type: "thin", parameters: "253:3 1")
        #expect(target == .unmodelled(type: "thin", parameters: "253:3 1"))
        #expect(target.parameters == "253:3 1")
        let line = try TableLine(parsing: "0 2097152 thin-pool 253:1 253:2 128 0 1 skip_block_zeroing")
        #expect(line.target == .unmodelled(type: "thin-pool", parameters: "253:1 253:2 128 0 1 skip_block_zeroing"))
        #expect(line.description == "0 2097152 thin-pool 253:1 253:2 128 0 1 skip_block_zeroing")
    }
}

@Suite("Exact rendered text")
struct RenderedTextTests {
    @Test("target parameters", arguments: [
        (Target.linear(Linear(device: .dev(7, 0), offset: Sectors(2048))), "7:0 2048"),
        (.linear(Linear(device: .path("/dev/loop0"))), "/dev/loop0 0"),
        (.era(Era(metadata: .dev(7, 3), origin: .dev(7, 0), blockSize: Sectors(128))), "7:3 7:0 128"),
        (.snapshotOrigin(SnapshotOrigin(origin: .dev(7, 0))), "7:0"),
        (.snapshotOrigin(SnapshotOrigin(origin: .path("/dev/mapper/data-real"))), "/dev/mapper/data-real"),
        (.snapshot(Snapshot(origin: .dev(7, 1), cow: .dev(7, 2), persistence: .persistent, chunkSize: Sectors(8))),
         "7:1 7:2 P 8"),
        (.snapshot(Snapshot(origin: .dev(7, 1), cow: .dev(7, 2), chunkSize: Sectors(8))), "7:1 7:2 P 8"),
        (.snapshot(Snapshot(origin: .dev(7, 1), cow: .dev(7, 2), persistence: .persistentReportingOverflow,
                            chunkSize: Sectors(16))), "7:1 7:2 PO 16"),
        (.snapshot(Snapshot(origin: .dev(7, 1), cow: .dev(7, 2), persistence: .transient, chunkSize: Sectors(8))),
         "7:1 7:2 N 8"),
        (.snapshot(Snapshot(origin: .dev(7, 1), cow: .dev(7, 2), chunkSize: Sectors(8),
                            features: [.discardZeroesCOW])), "7:1 7:2 P 8 1 discard_zeroes_cow"),
        (.snapshot(Snapshot(origin: .dev(7, 1), cow: .dev(7, 2), persistence: .persistent, chunkSize: Sectors(8),
                            features: [.discardZeroesCOW, .discardPassdownOrigin])),
         "7:1 7:2 P 8 2 discard_zeroes_cow discard_passdown_origin"),
        (.snapshotMerge(SnapshotMerge(origin: .dev(7, 1), cow: .dev(7, 2), chunkSize: Sectors(8))), "7:1 7:2 P 8"),
        (.zero, ""),
        (.error, ""),
    ])
    func parameters(target: Target, expected: String) {
        #expect(target.parameters == expected)
    }

    @Test("table lines, with no trailing space when there are no parameters", arguments: [
        (TableLine(start: .zero, length: Sectors(2048), target: .zero), "0 2048 zero"),
        (TableLine(start: .zero, length: Sectors(2048), target: .error), "0 2048 error"),
        (TableLine(start: Sectors(2048), length: Sectors(4096),
                   target: .linear(Linear(device: .dev(7, 0), offset: Sectors(2048)))), "2048 4096 linear 7:0 2048"),
        (TableLine(start: .zero, length: Sectors(2_097_152),
                   target: .snapshot(Snapshot(origin: .dev(7, 1), cow: .dev(7, 2), chunkSize: Sectors(8)))),
         "0 2097152 snapshot 7:1 7:2 P 8"),
        (TableLine(start: .zero, length: Sectors(100), target: .unmodelled(type: "thin", parameters: "253:3 1")),
         "0 100 thin 253:3 1"),
        (TableLine(start: .zero, length: Sectors(100), target: .unmodelled(type: "foo", parameters: "")),
         "0 100 foo"),
    ])
    func tableLines(line: TableLine, expected: String) {
        #expect(line.description == expected)
    }
}

@Suite("Target parse errors")
struct TargetParseErrorTests {
    @Test("malformed parameters are refused as .malformed", arguments: [
        ("linear", ""),
        ("linear", "7:0"),
        ("linear", "7:0 0 1"),
        ("linear", "7:0 abc"),
        ("linear", "7:0 -5"),
        ("linear", "7:0 +5"),
        ("linear", "7:0 1.5"),
        ("linear", "7:0 18446744073709551616"),
        ("linear", "loop0 0"),
        ("linear", "dev/loop0 0"),
        ("linear", "7: 0"),
        ("era", "7:3 7:0"),
        ("era", "7:3 7:0 x"),
        ("era", "7:3 loop0 8"),
        ("snapshot-origin", ""),
        ("snapshot-origin", "7:0 7:1"),
        ("snapshot-origin", "loop0"),
        ("snapshot", "7:1 7:2 P"),
        ("snapshot", "7:1 7:2 X 8"),
        ("snapshot", "7:1 7:2 p 8"),
        ("snapshot", "7:1 7:2 P 8 2 discard_zeroes_cow"),
        ("snapshot", "7:1 7:2 P 8 1 discard_zeroes_cow discard_passdown_origin"),
        ("snapshot", "7:1 7:2 P 8 1"),
        ("snapshot", "7:1 7:2 P 8 x discard_zeroes_cow"),
        ("snapshot", "7:1 7:2 P 8 1 discard_everything"),
        ("snapshot", "7:1 7:2 P eight"),
        ("snapshot", "loop1 7:2 P 8"),
        ("snapshot", "7:1 loop2 P 8"),
        ("snapshot-merge", "7:1 7:2 X 8"),
        ("snapshot-merge", "7:1 7:2"),
        ("zero", "1"),
        ("zero", "7:0 0"),
        ("error", "x"),
    ])
    func malformed(type: String, parameters: String) throws {
        let error = try #require(throws: TableError.self) { try Target(type: type, parameters: parameters) }
        #expect(error.isMalformed, "got \(error)")
    }

    @Test("each type's own initializer refuses the same way")
    func structInitializers() {
        #expect(throws: TableError.self) { try Linear(parameters: "7:0") }
        #expect(throws: TableError.self) { try Linear(parameters: "7:0 0 1") }
        #expect(throws: TableError.self) { try Era(parameters: "7:3 7:0") }
        #expect(throws: TableError.self) { try SnapshotOrigin(parameters: "") }
        #expect(throws: TableError.self) { try Snapshot(parameters: "7:1 7:2 X 8") }
        #expect(throws: TableError.self) { try SnapshotMerge(parameters: "7:1 7:2 X 8") }
        #expect(throws: TableError.self) { try Zero(parameters: "1") }
        #expect(throws: TableError.self) { try ErrorTarget(parameters: "1") }
    }

    @Test("the error names the offending token and why")
    func messages() throws {
        let offset = try #require(throws: TableError.self) { try Linear(parameters: "7:0 abc") }
        #expect(offset == .malformed("abc", reason: "offset is not a sector count"))
        let device = try #require(throws: TableError.self) { try Linear(parameters: "loop0 0") }
        #expect(device == .malformed("loop0", reason: "not a device (major:minor or absolute path)"))
        let count = try #require(throws: TableError.self) { try Linear(parameters: "7:0") }
        #expect(count.description.contains("linear takes 2 arguments, found 1"))
        let feature = try #require(throws: TableError.self) {
            try Snapshot(parameters: "7:1 7:2 P 8 1 discard_everything")
        }
        #expect(feature.description.contains("discard_everything"))
        let persistence = try #require(throws: TableError.self) { try Snapshot(parameters: "7:1 7:2 X 8") }
        #expect(persistence.description.contains("P, PO or N"))
    }

    @Test("parsing tolerates repeated spaces")
    func repeatedSpaces() throws {
        #expect(try Linear(parameters: "  7:0   2048 ") == Linear(device: .dev(7, 0), offset: Sectors(2048)))
    }

    @Test("a feature count of 0 means no features")
    func zeroFeatures() throws {
        let snapshot = try Snapshot(parameters: "7:1 7:2 P 8 0")
        #expect(snapshot == Snapshot(origin: .dev(7, 1), cow: .dev(7, 2), chunkSize: Sectors(8)))
    }

    @Test("parsed values carry the right fields")
    func parsedFields() throws {
        let snapshot = try Snapshot(parameters: "253:4 /dev/loop2 PO 32 1 discard_zeroes_cow")
        #expect(snapshot.origin == .dev(253, 4))
        #expect(snapshot.cow == .path("/dev/loop2"))
        #expect(snapshot.persistence == .persistentReportingOverflow)
        #expect(snapshot.chunkSize == Sectors(32))
        #expect(snapshot.features == [.discardZeroesCOW])
        #expect(snapshot.devices == [.dev(253, 4), .path("/dev/loop2")])

        let era = try Era(parameters: "7:3 7:0 128")
        #expect(era.metadata == .dev(7, 3))
        #expect(era.origin == .dev(7, 0))
        #expect(era.blockSize == Sectors(128))
        #expect(era.devices == [.dev(7, 3), .dev(7, 0)])
    }

    @Test("the kernel prints a merging snapshot's table with its features; they are read and dropped")
    func mergeWithFeatures() throws {
        let merge = try SnapshotMerge(parameters: "7:1 7:2 P 8 1 discard_zeroes_cow")
        #expect(merge == SnapshotMerge(origin: .dev(7, 1), cow: .dev(7, 2), chunkSize: Sectors(8)))
    }

    @Test("persistence: P and PO are persistent, N is not")
    func persistence() {
        #expect(SnapshotPersistence.persistent.isPersistent)
        #expect(SnapshotPersistence.persistentReportingOverflow.isPersistent)
        #expect(!SnapshotPersistence.transient.isPersistent)
    }
}
