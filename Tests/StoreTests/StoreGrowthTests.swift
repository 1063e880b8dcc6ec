import Foundation
import GRDB
import Store
import Testing

/// A store with one protected device and one snapshot of a 1 MiB store.
private func withSnapshot(_ body: (Store, SnapshotRecord) throws -> Void) throws {
    let root = FileManager.default.temporaryDirectory
        .appendingPathComponent("snapstack-growth-\(UUID().uuidString)").path
    defer { try? FileManager.default.removeItem(atPath: root) }
    let store = try Store(directory: root)
    let device = DeviceRecord(name: "data", state: .protected, sourcePath: "/dev/vdb", sourceMajor: 254,
                              sourceMinor: 16, sizeBytes: 1 << 30)
    try store.insert(device)
    let set = try store.insertSet(SnapshotSetRecord(state: .complete))
    let snapshot = SnapshotRecord(setID: set.id!, deviceID: device.id, name: "nightly", state: .active,
                                  storeKind: .file, storePath: "/var/lib/snapstack/stores/x.cow",
                                  storeSizeBytes: 1 << 20, chunkSectors: 8)
    try store.insert(snapshot)
    try body(store, snapshot)
}

@Test func growthIsRecordedThenFinishedWithTheNewSizeInOneStep() throws {
    try withSnapshot { store, snapshot in
        let growth = StoreGrowthRecord(snapshotID: snapshot.id, fromBytes: 1 << 20, toBytes: 3 << 20)
        try store.begin(growth)
        #expect(try store.storeGrowth(snapshotID: snapshot.id) == growth)
        #expect(try store.storeGrowths() == [growth])
        // The snapshot keeps its old size until the growth is finished.
        #expect(try store.snapshot(id: snapshot.id)?.storeSizeBytes == 1 << 20)

        #expect(try store.finishStoreGrowth(snapshotID: snapshot.id, sizeBytes: 3 << 20))
        #expect(try store.snapshot(id: snapshot.id)?.storeSizeBytes == 3 << 20)
        #expect(try store.storeGrowth(snapshotID: snapshot.id) == nil)
        #expect(try store.storeGrowths().isEmpty)
    }
}

@Test func aNewGrowthReplacesAnUnfinishedOne() throws {
    try withSnapshot { store, snapshot in
        try store.begin(StoreGrowthRecord(snapshotID: snapshot.id, fromBytes: 1 << 20, toBytes: 2 << 20))
        let second = StoreGrowthRecord(snapshotID: snapshot.id, fromBytes: 1 << 20, toBytes: 4 << 20)
        try store.begin(second)
        #expect(try store.storeGrowths() == [second])
    }
}

@Test func abandoningAGrowthKeepsTheSize() throws {
    try withSnapshot { store, snapshot in
        try store.begin(StoreGrowthRecord(snapshotID: snapshot.id, fromBytes: 1 << 20, toBytes: 2 << 20))
        #expect(try store.abandonStoreGrowth(snapshotID: snapshot.id))
        #expect(try store.snapshot(id: snapshot.id)?.storeSizeBytes == 1 << 20)
        #expect(try !store.abandonStoreGrowth(snapshotID: snapshot.id))
    }
}

@Test func droppingTheSnapshotForgetsItsGrowth() throws {
    try withSnapshot { store, snapshot in
        try store.begin(StoreGrowthRecord(snapshotID: snapshot.id, fromBytes: 1 << 20, toBytes: 2 << 20))
        try store.deleteSnapshot(id: snapshot.id)
        #expect(try store.storeGrowths().isEmpty)
        #expect(try !store.finishStoreGrowth(snapshotID: snapshot.id, sizeBytes: 2 << 20))
    }
}

@Test func aGrowthNeedsAnExistingSnapshot() throws {
    try withSnapshot { store, _ in
        #expect(throws: DatabaseError.self) {
            try store.begin(StoreGrowthRecord(snapshotID: "00000000", fromBytes: 1, toBytes: 2))
        }
    }
}
