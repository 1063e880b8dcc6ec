import Foundation
import GRDB
import StateDatabase
import Testing

/// A database with one protected device and one snapshot of a 1 MiB COW store.
private func withSnapshot(_ body: (StateDatabase, SnapshotRecord) throws -> Void) throws {
    let root = FileManager.default.temporaryDirectory
        .appendingPathComponent("snapstack-growth-\(UUID().uuidString)").path
    defer { try? FileManager.default.removeItem(atPath: root) }
    let database = try StateDatabase(directory: root)
    let device = DeviceRecord(name: "data", state: .protected, sourcePath: "/dev/vdb", sourceMajor: 254,
                              sourceMinor: 16, sizeBytes: 1 << 30)
    try database.insert(device)
    let set = try database.insertSet(SnapshotSetRecord(state: .complete))
    let snapshot = SnapshotRecord(setID: set.id!, deviceID: device.id, name: "nightly", state: .active,
                                  storeKind: .file, storePath: "/var/lib/snapstack/stores/x.cow",
                                  storeSizeBytes: 1 << 20, chunkSectors: 8)
    try database.insert(snapshot)
    try body(database, snapshot)
}

@Test func growthIsRecordedThenFinishedWithTheNewSizeInOneStep() throws {
    try withSnapshot { database, snapshot in
        let growth = StoreGrowthRecord(snapshotID: snapshot.id, fromBytes: 1 << 20, toBytes: 3 << 20)
        try database.begin(growth)
        #expect(try database.storeGrowth(snapshotID: snapshot.id) == growth)
        #expect(try database.storeGrowths() == [growth])
        // The snapshot keeps its old size until the growth is finished.
        #expect(try database.snapshot(id: snapshot.id)?.storeSizeBytes == 1 << 20)

        #expect(try database.finishStoreGrowth(snapshotID: snapshot.id, sizeBytes: 3 << 20))
        #expect(try database.snapshot(id: snapshot.id)?.storeSizeBytes == 3 << 20)
        #expect(try database.storeGrowth(snapshotID: snapshot.id) == nil)
        #expect(try database.storeGrowths().isEmpty)
    }
}

@Test func aNewGrowthReplacesAnUnfinishedOne() throws {
    try withSnapshot { database, snapshot in
        try database.begin(StoreGrowthRecord(snapshotID: snapshot.id, fromBytes: 1 << 20, toBytes: 2 << 20))
        let second = StoreGrowthRecord(snapshotID: snapshot.id, fromBytes: 1 << 20, toBytes: 4 << 20)
        try database.begin(second)
        #expect(try database.storeGrowths() == [second])
    }
}

@Test func abandoningAGrowthKeepsTheSize() throws {
    try withSnapshot { database, snapshot in
        try database.begin(StoreGrowthRecord(snapshotID: snapshot.id, fromBytes: 1 << 20, toBytes: 2 << 20))
        #expect(try database.abandonStoreGrowth(snapshotID: snapshot.id))
        #expect(try database.snapshot(id: snapshot.id)?.storeSizeBytes == 1 << 20)
        #expect(try !database.abandonStoreGrowth(snapshotID: snapshot.id))
    }
}

@Test func droppingTheSnapshotForgetsItsGrowth() throws {
    try withSnapshot { database, snapshot in
        try database.begin(StoreGrowthRecord(snapshotID: snapshot.id, fromBytes: 1 << 20, toBytes: 2 << 20))
        try database.deleteSnapshot(id: snapshot.id)
        #expect(try database.storeGrowths().isEmpty)
        #expect(try !database.finishStoreGrowth(snapshotID: snapshot.id, sizeBytes: 2 << 20))
    }
}

@Test func aGrowthNeedsAnExistingSnapshot() throws {
    try withSnapshot { database, _ in
        #expect(throws: DatabaseError.self) {
            try database.begin(StoreGrowthRecord(snapshotID: "00000000", fromBytes: 1, toBytes: 2))
        }
    }
}
