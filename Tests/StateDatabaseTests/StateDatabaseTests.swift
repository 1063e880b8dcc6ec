import Foundation
import GRDB
import StateDatabase
import Testing

// MARK: - Fixtures

/// Runs `body` with a fresh empty directory that is removed afterwards.
/// The state directory handed to `Store` is a child of it that does not
/// exist yet, so that creating it is part of what is exercised.
private func withScratch(_ body: (_ root: String, _ stateDirectory: String) throws -> Void) throws {
    let root = FileManager.default.temporaryDirectory
        .appendingPathComponent("snapstack-store-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: root) }
    try body(root, root + "/state")
}

private func makeDevice(
    name: String = "data", id: String = DeviceRecord.newID(), cbt: Bool = true
) -> DeviceRecord {
    DeviceRecord(
        id: id,
        name: name,
        state: .protected,
        sourcePath: "/dev/disk/by-id/\(name)",
        sourceMajor: 8,
        sourceMinor: 17,
        sizeBytes: 10 << 30,
        wwn: cbt ? "0x5000c500a1b2c3d4" : nil,
        serial: cbt ? "ZA1B2C3D" : nil,
        partUUID: cbt ? "6f1e2d3c-01" : nil,
        fsUUID: cbt ? "0b6c7a1e-3f1d-4c55-9e7a-2d1f0e9c8b7a" : nil,
        cbtBlockSectors: cbt ? 128 : nil,
        eraMetadataPath: cbt ? "/var/lib/snapstack/era/\(name).meta" : nil)
}

private func makeSnapshot(
    of device: DeviceRecord, in set: SnapshotSetRecord, name: String = "nightly",
    createdAt: Date = Date()
) throws -> SnapshotRecord {
    SnapshotRecord(
        setID: try #require(set.id),
        deviceID: device.id,
        name: name,
        state: .active,
        storeKind: .file,
        storePath: "/var/lib/snapstack/cow/\(device.name)-\(name).cow",
        storeSizeBytes: 1 << 30,
        chunkSectors: 16,
        era: device.cbtBlockSectors == nil ? nil : 42,
        createdAt: createdAt)
}

private struct Planned: Error {}

private func contents(_ path: String) throws -> Data {
    try Data(contentsOf: URL(fileURLWithPath: path))
}

// MARK: - Opening

@Test func createsPrivateDirectoryAndDatabase() throws {
    try withScratch { _, dir in
        let database = try StateDatabase(directory: dir)
        #expect(database.path == dir + "/snapstack.db")
        #expect(database.path == StateDatabase.databasePath(in: dir))
        #expect(!database.isReadOnly)
        #expect(FileManager.default.fileExists(atPath: database.path))
        let attributes = try FileManager.default.attributesOfItem(atPath: dir)
        let mode = try #require(attributes[.posixPermissions] as? NSNumber)
        #expect(mode.intValue & 0o777 == 0o700)
    }
}

@Test func existingDirectoryKeepsItsMode() throws {
    try withScratch { _, dir in
        try FileManager.default.createDirectory(
            atPath: dir, withIntermediateDirectories: false,
            attributes: [.posixPermissions: 0o750])
        _ = try StateDatabase(directory: dir)
        let attributes = try FileManager.default.attributesOfItem(atPath: dir)
        let mode = try #require(attributes[.posixPermissions] as? NSNumber)
        #expect(mode.intValue & 0o777 == 0o750)
    }
}

@Test func directoryPathThatIsAFileIsAnIOError() throws {
    try withScratch { _, dir in
        try Data("x".utf8).write(to: URL(fileURLWithPath: dir))
        let error = try #require(throws: StateDatabaseError.self) { try StateDatabase(directory: dir) }
        guard case .io(let path, _) = error else {
            Issue.record("expected .io, got \(error)")
            return
        }
        #expect(path == dir)
    }
}

@Test func walAndFullSynchronousAndForeignKeys() throws {
    try withScratch { _, dir in
        let database = try StateDatabase(directory: dir)
        let (synchronous, foreignKeys, journal) = try database.read { db in
            (
                try Int.fetchOne(db, sql: "PRAGMA synchronous"),
                try Int.fetchOne(db, sql: "PRAGMA foreign_keys"),
                try String.fetchOne(db, sql: "PRAGMA journal_mode")
            )
        }
        #expect(synchronous == 2)
        #expect(foreignKeys == 1)
        #expect(journal == "wal")

        // WAL is a property of the file: another connection sees it too.
        let other = try DatabaseQueue(path: database.path)
        let otherJournal = try other.read { try String.fetchOne($0, sql: "PRAGMA journal_mode") }
        #expect(otherJournal == "wal")

        // And the setting survives reopening.
        let reopened = try StateDatabase(directory: dir)
        let synchronousAgain = try reopened.read { try Int.fetchOne($0, sql: "PRAGMA synchronous") }
        #expect(synchronousAgain == 2)
    }
}

@Test func reopeningKeepsDataAndDoesNotMigrateAgain() throws {
    try withScratch { _, dir in
        let device = makeDevice()
        let schemaVersion: Int?
        do {
            let database = try StateDatabase(directory: dir)
            try database.insert(device)
            try database.record(event: "protect", subject: device.name, message: "protected")
            schemaVersion = try database.read { try Int.fetchOne($0, sql: "PRAGMA schema_version") }
        }
        let database = try StateDatabase(directory: dir)
        #expect(try database.devices() == [device])
        #expect(try database.events().count == 1)
        let (migrations, schemaVersionAgain) = try database.read { db in
            (
                try String.fetchAll(db, sql: "SELECT identifier FROM grdb_migrations"),
                try Int.fetchOne(db, sql: "PRAGMA schema_version")
            )
        }
        // Each migration applied exactly once, in the order they were released.
        #expect(migrations == ["v1", "v2-exports", "v2-store-growth", "v3-adoption", "v4-snapshot-access", "v5-event-counts", "v6-clean-stop"])
        // Any DDL bumps schema_version, so an unchanged one shows no migration ran.
        #expect(schemaVersionAgain == schemaVersion)
    }
}

@Test func garbageFileIsCorrupt() throws {
    try withScratch { _, dir in
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let path = StateDatabase.databasePath(in: dir)
        let garbage = Data((0..<8192).map { UInt8(truncatingIfNeeded: $0 &* 7919 &+ 13) })
        try garbage.write(to: URL(fileURLWithPath: path))

        let error = try #require(throws: StateDatabaseError.self) { try StateDatabase(directory: dir) }
        guard case .corrupt(let reportedPath, _) = error else {
            Issue.record("expected .corrupt, got \(error)")
            return
        }
        #expect(reportedPath == path)
        #expect(error.description.contains(path))
        #expect(error.description.contains("backup"))
        #expect(error.description.contains("snapstack reconcile"))

        let readOnlyError = try #require(throws: StateDatabaseError.self) { try StateDatabase.open(readOnly: dir) }
        guard case .corrupt = readOnlyError else {
            Issue.record("expected .corrupt, got \(readOnlyError)")
            return
        }
        #expect(try contents(path) == garbage)
    }
}

@Test func damagedPagesAreCorrupt() throws {
    try withScratch { _, dir in
        do {
            let database = try StateDatabase(directory: dir)
            try database.insert(makeDevice())
        }
        let path = StateDatabase.databasePath(in: dir)
        var bytes = try contents(path)
        let pageSize = Int(bytes[16]) << 8 | Int(bytes[17])
        #expect(bytes.count > pageSize)
        // Keep the header and schema page, scribble over every table page.
        for index in pageSize..<bytes.count {
            bytes[index] = 0xA5
        }
        try bytes.write(to: URL(fileURLWithPath: path))

        let error = try #require(throws: StateDatabaseError.self) { try StateDatabase(directory: dir) }
        guard case .corrupt = error else {
            Issue.record("expected .corrupt, got \(error)")
            return
        }
    }
}

@Test func newerSchemaIsRefusedAndLeftUntouched() throws {
    try withScratch { _, dir in
        do {
            let database = try StateDatabase(directory: dir)
            try database.insert(makeDevice())
        }
        let path = StateDatabase.databasePath(in: dir)
        do {
            let plain = try DatabaseQueue(path: path)
            try plain.write { db in
                try db.execute(sql: "INSERT INTO grdb_migrations (identifier) VALUES ('v99-future')")
            }
        }
        let before = try contents(path)

        let error = try #require(throws: StateDatabaseError.self) { try StateDatabase(directory: dir) }
        #expect(error == .newerSchema(path: path, unknown: ["v99-future"]))
        #expect(error.description.contains("newer snapstack"))
        #expect(try contents(path) == before)

        let readOnlyError = try #require(throws: StateDatabaseError.self) { try StateDatabase.open(readOnly: dir) }
        #expect(readOnlyError == .newerSchema(path: path, unknown: ["v99-future"]))
        #expect(try contents(path) == before)
    }
}

@Test func readOnlyOnMissingDirectoryCreatesNothing() throws {
    try withScratch { root, dir in
        #expect(try StateDatabase.open(readOnly: dir) == nil)
        #expect(!FileManager.default.fileExists(atPath: dir))

        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false)
        #expect(try StateDatabase.open(readOnly: dir) == nil)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty)
        #expect(try FileManager.default.contentsOfDirectory(atPath: root) == ["state"])
    }
}

@Test func readOnlyReadsAndRefusesWrites() throws {
    try withScratch { _, dir in
        let device = makeDevice()
        do {
            let database = try StateDatabase(directory: dir)
            try database.insert(device)
        }
        let database = try #require(try StateDatabase.open(readOnly: dir))
        #expect(database.isReadOnly)
        #expect(try database.devices() == [device])

        let error = try #require(throws: StateDatabaseError.self) {
            try database.insert(makeDevice(name: "other"))
        }
        guard case .io = error else {
            Issue.record("expected .io, got \(error)")
            return
        }
    }
}

@Test func readOnlyUpgradesADatabaseWithoutSchema() throws {
    try withScratch { _, dir in
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let path = StateDatabase.databasePath(in: dir)
        #expect(FileManager.default.createFile(atPath: path, contents: Data()))

        let database = try #require(try StateDatabase.open(readOnly: dir))
        #expect(database.isReadOnly)
        #expect(try database.devices().isEmpty)
        #expect(try database.sets().isEmpty)
    }
}

@Test func readOnlyWithoutUpgradingLeavesAnOlderDatabaseAlone() throws {
    try withScratch { _, dir in
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let path = StateDatabase.databasePath(in: dir)
        #expect(FileManager.default.createFile(atPath: path, contents: Data()))

        #expect(try StateDatabase.open(readOnly: dir, upgrading: false) == nil)
        #expect(try contents(path).isEmpty)
        // A current one reads as without the flag.
        let device = makeDevice()
        do { try StateDatabase(directory: dir).insert(device) }
        let database = try #require(try StateDatabase.open(readOnly: dir, upgrading: false))
        #expect(try database.devices() == [device])
    }
}

// MARK: - Round trips

@Test func deviceRoundTrip() throws {
    try withScratch { _, dir in
        let database = try StateDatabase(directory: dir)
        let full = makeDevice(name: "data")
        let bare = makeDevice(name: "boot", cbt: false)
        try database.insert(full)
        try database.insert(bare)

        #expect(try database.device(id: full.id) == full)
        #expect(try database.device(named: "boot") == bare)
        #expect(try database.device(named: "missing") == nil)
        #expect(try database.device(id: "00000000") == nil)
        #expect(try database.devices() == [bare, full])

        var changed = full
        changed.state = .unprotecting
        changed.sourceMinor = 33
        changed.cbtBlockSectors = nil
        changed.eraMetadataPath = nil
        try database.update(changed)
        #expect(try database.device(id: full.id) == changed)
    }
}

@Test func setAndSnapshotRoundTrip() throws {
    try withScratch { _, dir in
        let database = try StateDatabase(directory: dir)
        let device = makeDevice()
        try database.insert(device)

        let set = try database.insertSet(SnapshotSetRecord(state: .creating))
        let setID = try #require(set.id)
        #expect(try database.set(id: setID) == set)

        var complete = set
        complete.state = .complete
        complete.freezeMicroseconds = 1_234
        try database.updateSet(complete)
        #expect(try database.set(id: setID) == complete)
        #expect(try database.sets() == [complete])

        let snapshot = try makeSnapshot(of: device, in: set)
        try database.insert(snapshot)
        #expect(try database.snapshot(id: snapshot.id) == snapshot)
        #expect(try database.snapshot(deviceID: device.id, name: "nightly") == snapshot)
        #expect(try database.snapshot(deviceID: device.id, name: "weekly") == nil)
        #expect(try database.snapshots(deviceID: device.id) == [snapshot])
        #expect(try database.snapshots() == [snapshot])
        #expect(try database.snapshots(setID: setID) == [snapshot])

        var merging = snapshot
        merging.state = .mergePending
        merging.storeKind = .device
        merging.storePath = "/dev/vg0/cow"
        merging.era = nil
        try database.update(merging)
        #expect(try database.snapshot(id: snapshot.id) == merging)
    }
}

@Test func everyStateRoundTrips() throws {
    try withScratch { _, dir in
        let database = try StateDatabase(directory: dir)
        for (index, state) in DeviceState.allCases.enumerated() {
            var device = makeDevice(name: "d\(index)")
            device.state = state
            try database.insert(device)
            #expect(try database.device(id: device.id)?.state == state)
        }
        let device = try #require(try database.devices().first)
        for (index, state) in SnapshotState.allCases.enumerated() {
            let set = try database.insertSet(SnapshotSetRecord(state: SnapshotSetState.allCases[index % 2]))
            var snapshot = try makeSnapshot(of: device, in: set, name: "s\(index)")
            snapshot.state = state
            snapshot.storeKind = StoreKind.allCases[index % 2]
            try database.insert(snapshot)
            #expect(try database.snapshot(id: snapshot.id) == snapshot)
            #expect(try database.set(id: try #require(set.id)) == set)
        }
        let stored = try database.read { try String.fetchAll($0, sql: "SELECT state FROM snapshot") }
        #expect(Set(stored) == Set(SnapshotState.allCases.map(\.rawValue)))
    }
}

@Test func theLogKeepsItsNewestEventsAndCountsEveryOne() throws {
    try withScratch { _, dir in
        let database = try StateDatabase(directory: dir)
        for index in 1...250 {
            try database.record(event: index % 5 == 0 ? "overflow" : "extend", subject: "data-s", message: "\(index)", keeping: 100)
        }
        let kept = try database.events(limit: 1000)
        #expect(kept.count == 100)
        #expect(kept.first?.message == "250")
        #expect(kept.last?.message == "151")
        // The counts behind the metrics' counters include what the log let go.
        #expect(try database.eventCount(kind: "overflow") == 50)
        #expect(try database.eventCount(kind: "extend") == 200)
        #expect(try database.eventCount(kind: "never") == 0)
    }
}

@Test func eventsNewestFirst() throws {
    try withScratch { _, dir in
        let database = try StateDatabase(directory: dir)
        try database.record(event: "protect", subject: "data", message: "origin stack loaded")
        try database.record(event: "snapshot", subject: "data/nightly", message: "taken")
        try database.record(event: "overflow", subject: "data/nightly", message: "store full")

        let events = try database.events()
        #expect(events.map(\.kind) == ["overflow", "snapshot", "protect"])
        #expect(events.map(\.subject) == ["data/nightly", "data/nightly", "data"])
        #expect(events[2].message == "origin stack loaded")
        #expect(events.allSatisfy { $0.id != nil && abs($0.time.timeIntervalSinceNow) < 60 })
        #expect(try database.events(limit: 2).map(\.kind) == ["overflow", "snapshot"])

        // A record made in memory equals itself read back, date included.
        var event = EventRecord(kind: "reconcile", subject: "data", message: "nothing to do")
        try database.write { try event.insert($0) }
        #expect(try database.events(limit: 1) == [event])
    }
}

@Test func datesSurviveRepeatedSaves() throws {
    try withScratch { _, dir in
        let database = try StateDatabase(directory: dir)
        var generator = SystemRandomNumberGenerator()
        let made = (0..<500).map { _ in
            SnapshotSetRecord(
                createdAt: Date(timeIntervalSince1970: .random(in: 0..<4_000_000_000, using: &generator)),
                state: .complete)
        }
        let inserted = try database.write { db in try made.map { try $0.inserted(db) } }
        let fetched = try database.sets()
        #expect(fetched == inserted)
        try database.write { db in try fetched.forEach { try $0.update(db) } }
        #expect(try database.sets() == inserted)
    }
}

@Test func newIDsAreShortLowercaseHex() {
    let ids = (0..<200).map { _ in DeviceRecord.newID() } + (0..<200).map { _ in SnapshotRecord.newID() }
    for id in ids {
        #expect(id.count == 8)
        #expect(id.allSatisfy { "0123456789abcdef".contains($0) })
    }
    #expect(Set(ids).count > 390)
}

// MARK: - Names

@Test func deviceNamesAreUnique() throws {
    try withScratch { _, dir in
        let database = try StateDatabase(directory: dir)
        try database.insert(makeDevice(name: "data"))
        let other = makeDevice(name: "logs")
        try database.insert(other)

        #expect(throws: StateDatabaseError.duplicateName("data")) {
            try database.insert(makeDevice(name: "data"))
        }
        var renamed = other
        renamed.name = "data"
        #expect(throws: StateDatabaseError.duplicateName("data")) { try database.update(renamed) }
        #expect(try database.devices().map(\.name) == ["data", "logs"])
    }
}

@Test func snapshotNamesAreUniquePerDevice() throws {
    try withScratch { _, dir in
        let database = try StateDatabase(directory: dir)
        let data = makeDevice(name: "data")
        let logs = makeDevice(name: "logs")
        try database.insert(data)
        try database.insert(logs)
        let set = try database.insertSet(SnapshotSetRecord(state: .complete))

        try database.insert(try makeSnapshot(of: data, in: set, name: "nightly"))
        // The same name on another device is fine.
        try database.insert(try makeSnapshot(of: logs, in: set, name: "nightly"))
        #expect(throws: StateDatabaseError.duplicateName("nightly")) {
            try database.insert(try makeSnapshot(of: data, in: set, name: "nightly"))
        }

        var weekly = try makeSnapshot(of: data, in: set, name: "weekly")
        try database.insert(weekly)
        weekly.name = "nightly"
        #expect(throws: StateDatabaseError.duplicateName("nightly")) { try database.update(weekly) }
        #expect(try database.snapshots().count == 3)
    }
}

@Test func snapshotsOrderByCreationThenName() throws {
    try withScratch { _, dir in
        let database = try StateDatabase(directory: dir)
        let device = makeDevice()
        try database.insert(device)
        let set = try database.insertSet(SnapshotSetRecord(state: .complete))
        let early = Date(timeIntervalSince1970: 1_700_000_000)
        let late = early.addingTimeInterval(3_600)
        try database.insert(try makeSnapshot(of: device, in: set, name: "c", createdAt: late))
        try database.insert(try makeSnapshot(of: device, in: set, name: "b", createdAt: early))
        try database.insert(try makeSnapshot(of: device, in: set, name: "a", createdAt: late))
        #expect(try database.snapshots(deviceID: device.id).map(\.name) == ["b", "a", "c"])
        #expect(try database.snapshots(deviceID: "ffffffff").isEmpty)
    }
}

@Test func snapshotNeedsExistingDeviceAndSet() throws {
    try withScratch { _, dir in
        let database = try StateDatabase(directory: dir)
        let device = makeDevice()
        try database.insert(device)
        let set = try database.insertSet(SnapshotSetRecord(state: .complete))
        var orphan = try makeSnapshot(of: device, in: set)
        orphan.deviceID = "deadbeef"
        #expect(throws: (any Error).self) { try database.insert(orphan) }
        orphan.deviceID = device.id
        orphan.setID = try #require(set.id) + 1000
        #expect(throws: (any Error).self) { try database.insert(orphan) }
        #expect(try database.snapshots().isEmpty)
    }
}

// MARK: - Deletes

@Test func deletingADeviceDeletesItsSnapshotsAndEmptiedSets() throws {
    try withScratch { _, dir in
        let database = try StateDatabase(directory: dir)
        let data = makeDevice(name: "data")
        let logs = makeDevice(name: "logs")
        try database.insert(data)
        try database.insert(logs)
        let shared = try database.insertSet(SnapshotSetRecord(state: .complete))
        let own = try database.insertSet(SnapshotSetRecord(state: .complete))
        let pending = try database.insertSet(SnapshotSetRecord(state: .creating))
        try database.insert(try makeSnapshot(of: data, in: shared, name: "a"))
        let kept = try makeSnapshot(of: logs, in: shared, name: "a")
        try database.insert(kept)
        try database.insert(try makeSnapshot(of: data, in: own, name: "b"))

        #expect(try database.deleteDevice(id: data.id))
        #expect(try database.device(id: data.id) == nil)
        #expect(try database.snapshots(deviceID: data.id).isEmpty)
        #expect(try database.snapshots() == [kept])
        // The set that still holds a snapshot stays; the one left empty goes;
        // one that never had snapshots is not this deletion's business.
        #expect(try database.sets().map(\.id) == [shared.id, pending.id])
        #expect(try !database.deleteDevice(id: data.id))
    }
}

@Test func deletingTheLastSnapshotDeletesItsSet() throws {
    try withScratch { _, dir in
        let database = try StateDatabase(directory: dir)
        let data = makeDevice(name: "data")
        let logs = makeDevice(name: "logs")
        try database.insert(data)
        try database.insert(logs)
        let set = try database.insertSet(SnapshotSetRecord(state: .complete))
        let setID = try #require(set.id)
        let first = try makeSnapshot(of: data, in: set)
        let second = try makeSnapshot(of: logs, in: set)
        try database.insert(first)
        try database.insert(second)

        #expect(try database.deleteSnapshot(id: first.id))
        #expect(try database.set(id: setID) == set)
        #expect(try database.deleteSnapshot(id: second.id))
        #expect(try database.set(id: setID) == nil)
        #expect(try !database.deleteSnapshot(id: second.id))
        #expect(try database.devices().count == 2)
    }
}

@Test func deletingASetDeletesItsSnapshots() throws {
    try withScratch { _, dir in
        let database = try StateDatabase(directory: dir)
        let device = makeDevice()
        try database.insert(device)
        let doomed = try database.insertSet(SnapshotSetRecord(state: .complete))
        let other = try database.insertSet(SnapshotSetRecord(state: .complete))
        try database.insert(try makeSnapshot(of: device, in: doomed, name: "a"))
        try database.insert(try makeSnapshot(of: device, in: doomed, name: "b"))
        let kept = try makeSnapshot(of: device, in: other, name: "c")
        try database.insert(kept)

        #expect(try database.deleteSet(id: try #require(doomed.id)))
        #expect(try database.snapshots() == [kept])
        #expect(try database.sets() == [other])
        #expect(try database.devices() == [device])
    }
}

// MARK: - Transactions

@Test func aThrowingWriteLeavesNothingBehind() throws {
    try withScratch { _, dir in
        let database = try StateDatabase(directory: dir)
        let device = makeDevice()
        #expect(throws: Planned.self) {
            try database.write { db in
                try device.insert(db)
                var set = SnapshotSetRecord(state: .creating)
                try set.insert(db)
                let snapshot = try makeSnapshot(of: device, in: set)
                try snapshot.insert(db)
                var event = EventRecord(kind: "snapshot", subject: device.name, message: "half done")
                try event.insert(db)
                throw Planned()
            }
        }
        #expect(try database.devices().isEmpty)
        #expect(try database.sets().isEmpty)
        #expect(try database.snapshots().isEmpty)
        #expect(try database.events().isEmpty)

        // The same work without the failure is all kept.
        let count = try database.write { db in
            try device.insert(db)
            return try DeviceRecord.fetchCount(db)
        }
        #expect(count == 1)
        #expect(try database.devices() == [device])
    }
}

// MARK: - Messages

@Test func errorDescriptionsSayWhatToDo() {
    let corrupt = StateDatabaseError.corrupt(path: "/var/lib/snapstack/snapstack.db", reason: "file is not a database")
    #expect(corrupt.description.contains("/var/lib/snapstack/snapstack.db"))
    #expect(corrupt.description.contains("file is not a database"))
    #expect(corrupt.description.contains("snapstack reconcile"))

    let newer = StateDatabaseError.newerSchema(path: "/s/snapstack.db", unknown: ["v2", "v3"])
    #expect(newer.description.contains("v2, v3"))
    #expect(newer.description.contains("unchanged"))

    #expect(StateDatabaseError.duplicateName("data").description.contains("'data'"))

    let io = StateDatabaseError.io(path: "/s", reason: "Permission denied")
    #expect(io.description.contains("/s"))
    #expect(io.description.contains("Permission denied"))
}
